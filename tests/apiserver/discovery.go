package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"

	apidiscoveryv2 "k8s.io/api/apidiscovery/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/endpoints/discovery/aggregated"
	"k8s.io/apiserver/pkg/endpoints/handlers/negotiation"
	"k8s.io/apiserver/pkg/endpoints/handlers/responsewriters"
)

// aggregatedAccept asks the discovery manager for its v2 document.
const aggregatedAccept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"

// newRootDiscovery serves GET /apis, which upstream's standalone server turns
// off (in a real cluster kube-aggregator answers it). Without it kubectl finds
// no resources and kopf cannot start.
//
// Aggregated (v2) requests go straight to the manager that apiextensions'
// discovery controller keeps current for every CRD group. Legacy requests get
// an APIGroupList derived from that same document, so both views always agree
// without a second controller watching CRDs.
func newRootDiscovery(manager aggregated.ResourceManager, serializer runtime.NegotiatedSerializer) http.Handler {
	legacy := &legacyGroupList{manager: manager, serializer: serializer}
	root := aggregated.WrapAggregatedDiscoveryToHandler(legacy, manager, nil)

	mux := http.NewServeMux()
	mux.Handle("/apis", root)
	mux.Handle("/apis/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/apis/" {
			root.ServeHTTP(w, r)
			return
		}
		http.NotFound(w, r)
	}))
	return mux
}

type legacyGroupList struct {
	manager    aggregated.ResourceManager
	serializer runtime.NegotiatedSerializer
}

func (h *legacyGroupList) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	probe := httptest.NewRequest(http.MethodGet, "/apis", nil).WithContext(r.Context())
	probe.Header.Set("Accept", aggregatedAccept)
	rec := httptest.NewRecorder()
	h.manager.ServeHTTP(rec, probe)

	var doc apidiscoveryv2.APIGroupDiscoveryList
	if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &doc) != nil {
		responsewriters.InternalError(w, r, errAggregatedUnreadable)
		return
	}

	list := &metav1.APIGroupList{Groups: []metav1.APIGroup{}}
	for _, g := range doc.Items {
		group := metav1.APIGroup{Name: g.Name}
		// The manager already orders versions by preference.
		for _, v := range g.Versions {
			group.Versions = append(group.Versions, metav1.GroupVersionForDiscovery{
				GroupVersion: schema.GroupVersion{Group: g.Name, Version: v.Version}.String(),
				Version:      v.Version,
			})
		}
		if len(group.Versions) == 0 {
			continue
		}
		group.PreferredVersion = group.Versions[0]
		list.Groups = append(list.Groups, group)
	}
	responsewriters.WriteObjectNegotiated(h.serializer, negotiation.DefaultEndpointRestrictions, schema.GroupVersion{}, w, r, http.StatusOK, list, false)
}

type discoveryError string

func (e discoveryError) Error() string { return string(e) }

const errAggregatedUnreadable = discoveryError("aggregated discovery document unreadable")
