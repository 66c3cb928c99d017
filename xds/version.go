package xds

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/vigil-sidecar/vigil/internal/atomicfile"
)

// nextEpoch returns this run's version epoch, which prefixes every version the server
// serves ("<epoch>.<n>"), so that versions keep growing across restarts. The epoch is
// the larger of the last one in path plus one and the current Unix time in seconds; it
// is saved to path (when set) before any version is served.
func nextEpoch(path string, now time.Time) (uint64, error) {
	epoch := uint64(max(now.Unix(), 1))
	if path == "" {
		return epoch, nil
	}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return 0, fmt.Errorf("xds: version file: %w", err)
	default:
		prev, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("xds: version file %s: %w", path, err)
		}
		epoch = max(epoch, prev+1)
	}
	if err := atomicfile.Write(path, []byte(strconv.FormatUint(epoch, 10)+"\n")); err != nil {
		return 0, fmt.Errorf("xds: version file: %w", err)
	}
	return epoch, nil
}
