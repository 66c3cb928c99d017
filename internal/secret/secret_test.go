package secret_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/vigil-sidecar/vigil/internal/secret"
)

func TestSecret(t *testing.T) {
	s := secret.Secret("hunter2")
	j, _ := json.Marshal(s)
	for _, out := range []string{s.String(), fmt.Sprintf("%v %s %#v %+v", s, s, s, s), string(j)} {
		if strings.Contains(out, "hunter2") {
			t.Errorf("printed the value: %s", out)
		}
	}
	if !s.Equal("hunter2") || s.Equal("hunter") || s.Equal("hunter22") || s.Equal("") {
		t.Error("Equal")
	}
	if secret.Secret("").Equal("") {
		t.Error("an empty secret equals the empty string: an unset token would let anyone in")
	}
}
