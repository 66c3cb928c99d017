package xds

import (
	"context"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/protobuf/proto"
)

// typeLabel is a short metric label for a type URL: cluster, endpoint, listener, route.
func typeLabel(typeURL string) string {
	switch typeURL {
	case resourcev3.ClusterType:
		return "cluster"
	case resourcev3.EndpointType:
		return "endpoint"
	case resourcev3.ListenerType:
		return "listener"
	case resourcev3.RouteType:
		return "route"
	case "":
		return "ads"
	}
	return "other"
}

// serviceLabel names the gRPC service of a stream: ads, cds, eds, lds, rds.
func serviceLabel(typeURL string) string {
	switch typeURL {
	case "":
		return "ads"
	case resourcev3.ClusterType:
		return "cds"
	case resourcev3.EndpointType:
		return "eds"
	case resourcev3.ListenerType:
		return "lds"
	case resourcev3.RouteType:
		return "rds"
	}
	return "other"
}

func nodeID(n *corev3.Node) string {
	if n.GetId() != "" {
		return n.GetId()
	}
	return n.GetUserAgentName()
}

// callbacks count streams, responses and NACKs, and log every NACK with the client's error detail.
func (s *Server) callbacks() serverv3.Callbacks {
	open := func(api string) func(context.Context, int64, string) error {
		return func(_ context.Context, id int64, typeURL string) error {
			svc := serviceLabel(typeURL)
			s.streams.Store(api+"/"+strconv.FormatInt(id, 10), svc)
			s.m.streams.WithLabelValues(api, svc).Inc()
			s.ackOpened(api, id)
			return nil
		}
	}
	closed := func(api string) func(int64, *corev3.Node) {
		return func(id int64, n *corev3.Node) {
			if svc, ok := s.streams.LoadAndDelete(api + "/" + strconv.FormatInt(id, 10)); ok {
				s.m.streams.WithLabelValues(api, svc.(string)).Dec()
			}
			s.ackClosed(api, id)
		}
	}
	nack := func(n *corev3.Node, typeURL, version, nonce string, detail interface{ GetMessage() string }) {
		s.m.nacks.WithLabelValues(typeLabel(typeURL)).Inc()
		s.log.Warn("xds: client rejected a response (NACK); it keeps its last accepted version",
			"node", nodeID(n), "type", typeURL, "accepted_version", version, "nonce", nonce,
			"error", strings.TrimSpace(detail.GetMessage()))
	}
	return serverv3.CallbackFuncs{
		StreamOpenFunc:        open("sotw"),
		StreamClosedFunc:      closed("sotw"),
		DeltaStreamOpenFunc:   open("delta"),
		DeltaStreamClosedFunc: closed("delta"),
		StreamRequestFunc: func(id int64, r *discoveryv3.DiscoveryRequest) error {
			s.ackAnswered("sotw", id, r.GetResponseNonce(), r.GetErrorDetail() != nil)
			if r.GetErrorDetail() != nil {
				nack(r.GetNode(), r.GetTypeUrl(), r.GetVersionInfo(), r.GetResponseNonce(), r.GetErrorDetail())
			}
			return nil
		},
		StreamDeltaRequestFunc: func(id int64, r *discoveryv3.DeltaDiscoveryRequest) error {
			s.ackAnswered("delta", id, r.GetResponseNonce(), r.GetErrorDetail() != nil)
			if r.GetErrorDetail() != nil {
				nack(r.GetNode(), r.GetTypeUrl(), "", r.GetResponseNonce(), r.GetErrorDetail())
			}
			return nil
		},
		StreamResponseFunc: func(_ context.Context, id int64, _ *discoveryv3.DiscoveryRequest, r *discoveryv3.DiscoveryResponse) {
			s.ackSent("sotw", id, r.GetNonce())
			t := typeLabel(r.GetTypeUrl())
			s.m.responses.WithLabelValues("sotw", t).Inc()
			s.m.resources.WithLabelValues(t).Add(float64(len(r.GetResources())))
			s.m.bytes.WithLabelValues(t).Add(float64(proto.Size(r)))
		},
		StreamDeltaResponseFunc: func(id int64, _ *discoveryv3.DeltaDiscoveryRequest, r *discoveryv3.DeltaDiscoveryResponse) {
			s.ackSent("delta", id, r.GetNonce())
			t := typeLabel(r.GetTypeUrl())
			s.m.responses.WithLabelValues("delta", t).Inc()
			s.m.resources.WithLabelValues(t).Add(float64(len(r.GetResources()) + len(r.GetRemovedResources())))
			s.m.bytes.WithLabelValues(t).Add(float64(proto.Size(r)))
		},
	}
}
