package main

import (
	"context"
	"fmt"
	"reflect"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apiextensions-apiserver/pkg/apiserver"
	"k8s.io/apiextensions-apiserver/pkg/cmd/server/options"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimachineryvalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apiserver/pkg/registry/generic"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
	genericapiserver "k8s.io/apiserver/pkg/server"
	genericoptions "k8s.io/apiserver/pkg/server/options"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/apiserver/pkg/storage/names"
	"k8s.io/client-go/kubernetes"
)

// coreKind describes one core/v1 resource served as plain etcd storage: none
// of kube-apiserver's semantics (namespace finalization, secret type checks,
// event rate limiting) apply. kopf needs namespaces to exist, Hedgerow needs
// secrets, and `kubectl describe` reads events.
type coreKind struct {
	resource, singular string
	shortNames         []string
	namespaced         bool
	object, list       runtime.Object
	// fields are the extra field selectors kube-apiserver supports for the
	// kind and that clients actually use (kubectl describe, kopf).
	fields func(obj runtime.Object) fields.Set
	// prepare fills in what core defaulting would, since k8s.io/api ships
	// no defaulters.
	prepare func(obj runtime.Object)
	ttl     time.Duration
}

var coreKinds = []coreKind{
	{
		resource: "namespaces", singular: "namespace", shortNames: []string{"ns"},
		object: &corev1.Namespace{}, list: &corev1.NamespaceList{},
		fields: func(obj runtime.Object) fields.Set {
			return fields.Set{"status.phase": string(obj.(*corev1.Namespace).Status.Phase)}
		},
		// No finalizer: there is no namespace controller that would remove it.
		prepare: func(obj runtime.Object) { obj.(*corev1.Namespace).Status.Phase = corev1.NamespaceActive },
	},
	{
		resource: "events", singular: "event", shortNames: []string{"ev"}, namespaced: true,
		object: &corev1.Event{}, list: &corev1.EventList{},
		fields: func(obj runtime.Object) fields.Set {
			e := obj.(*corev1.Event)
			return fields.Set{
				"involvedObject.kind":            e.InvolvedObject.Kind,
				"involvedObject.namespace":       e.InvolvedObject.Namespace,
				"involvedObject.name":            e.InvolvedObject.Name,
				"involvedObject.uid":             string(e.InvolvedObject.UID),
				"involvedObject.apiVersion":      e.InvolvedObject.APIVersion,
				"involvedObject.resourceVersion": e.InvolvedObject.ResourceVersion,
				"involvedObject.fieldPath":       e.InvolvedObject.FieldPath,
				"reason":                         e.Reason,
				"reportingComponent":             e.ReportingController,
				"source":                         e.Source.Component,
				"type":                           e.Type,
			}
		},
		// Same retention as kube-apiserver's default --event-ttl.
		ttl: time.Hour,
	},
	{
		resource: "configmaps", singular: "configmap", shortNames: []string{"cm"}, namespaced: true,
		object: &corev1.ConfigMap{}, list: &corev1.ConfigMapList{},
	},
	{
		resource: "secrets", singular: "secret", namespaced: true,
		object: &corev1.Secret{}, list: &corev1.SecretList{},
		fields: func(obj runtime.Object) fields.Set {
			return fields.Set{"type": string(obj.(*corev1.Secret).Type)}
		},
		prepare: func(obj runtime.Object) {
			s := obj.(*corev1.Secret)
			if s.Type == "" {
				s.Type = corev1.SecretTypeOpaque
			}
			// kube-apiserver folds stringData into data when converting to
			// its internal type; clients read secrets back from data only.
			for k, v := range s.StringData {
				if s.Data == nil {
					s.Data = map[string][]byte{}
				}
				s.Data[k] = []byte(v)
			}
			s.StringData = nil
		},
	},
}

// The namespaces a fresh cluster has; clients assume "default" exists.
var initialNamespaces = []string{metav1.NamespaceDefault, metav1.NamespaceSystem, metav1.NamespacePublic}

func init() {
	// The core/v1 Go types double as the "internal" version: k8s.io/api has
	// no internal types or conversions, and registering the same type under
	// both versions makes every conversion a no-op that only sets the kind.
	internal := schema.GroupVersion{Group: "", Version: runtime.APIVersionInternal}
	for _, k := range coreKinds {
		apiserver.Scheme.AddKnownTypes(corev1.SchemeGroupVersion, k.object, k.list)
		apiserver.Scheme.AddKnownTypes(internal, k.object, k.list)
		kind := reflect.TypeOf(k.object).Elem().Name()
		if err := apiserver.Scheme.AddFieldLabelConversionFunc(corev1.SchemeGroupVersion.WithKind(kind), k.convertFieldLabel); err != nil {
			panic(err)
		}
	}
}

func (k coreKind) attrs(obj runtime.Object) (labels.Set, fields.Set, error) {
	attr := storage.DefaultClusterScopedAttr
	if k.namespaced {
		attr = storage.DefaultNamespaceScopedAttr
	}
	l, f, err := attr(obj)
	if err != nil || k.fields == nil {
		return l, f, err
	}
	return l, generic.MergeFieldsSets(f, k.fields(obj)), nil
}

func (k coreKind) convertFieldLabel(label, value string) (string, string, error) {
	switch label {
	case "metadata.name":
		return label, value, nil
	case "metadata.namespace":
		if k.namespaced {
			return label, value, nil
		}
	}
	if k.fields != nil {
		if _, ok := k.fields(k.object.DeepCopyObject())[label]; ok {
			return label, value, nil
		}
	}
	return "", "", fmt.Errorf("field label not supported: %s", label)
}

// strategy is the smallest rest strategy: generic metadata validation plus
// the kind's name rules.
type strategy struct {
	runtime.ObjectTyper
	names.NameGenerator
	kind coreKind
}

func (s strategy) NamespaceScoped() bool { return s.kind.namespaced }

func (s strategy) PrepareForCreate(_ context.Context, obj runtime.Object) {
	if s.kind.prepare != nil {
		s.kind.prepare(obj)
	}
}

func (s strategy) PrepareForUpdate(_ context.Context, obj, _ runtime.Object) {
	if s.kind.prepare != nil {
		s.kind.prepare(obj)
	}
}

func (s strategy) Validate(_ context.Context, obj runtime.Object) field.ErrorList {
	nameFn := apimachineryvalidation.NameIsDNSSubdomain
	if !s.kind.namespaced {
		nameFn = apimachineryvalidation.ValidateNamespaceName
	}
	m, err := metaOf(obj)
	if err != nil {
		return field.ErrorList{field.InternalError(field.NewPath("metadata"), err)}
	}
	return apimachineryvalidation.ValidateObjectMetaAccessor(m, s.kind.namespaced, nameFn, field.NewPath("metadata"))
}

func (strategy) ValidateUpdate(context.Context, runtime.Object, runtime.Object) field.ErrorList {
	return nil
}
func (strategy) WarningsOnCreate(context.Context, runtime.Object) []string { return nil }
func (strategy) WarningsOnUpdate(context.Context, runtime.Object, runtime.Object) []string {
	return nil
}
func (strategy) Canonicalize(runtime.Object)    {}
func (strategy) AllowCreateOnUpdate() bool      { return false }
func (strategy) AllowUnconditionalUpdate() bool { return true }

func metaOf(obj runtime.Object) (metav1.Object, error) {
	if m, ok := obj.(metav1.Object); ok {
		return m, nil
	}
	return nil, fmt.Errorf("%T has no object metadata", obj)
}

// installCoreV1 adds /api/v1 with the core kinds to the apiextensions server.
func installCoreV1(s *genericapiserver.GenericAPIServer, o *options.CustomResourceDefinitionsServerOptions, c *genericapiserver.RecommendedConfig) error {
	// The server's default REST options encode for apiextensions.k8s.io;
	// core objects must be stored as core/v1.
	etcd := *o.RecommendedOptions.Etcd
	etcd.StorageConfig.Codec = apiserver.Codecs.LegacyCodec(corev1.SchemeGroupVersion)
	etcd.StorageConfig.StorageObjectCountTracker = c.StorageObjectCountTracker
	restOptions := etcd.CreateRESTOptionsGetter(&genericoptions.SimpleStorageFactory{StorageConfig: etcd.StorageConfig}, c.ResourceTransformers)

	resources := map[string]rest.Storage{}
	for _, k := range coreKinds {
		store, err := newStore(k, restOptions)
		if err != nil {
			return err
		}
		resources[k.resource] = &coreREST{Store: store, shortNames: k.shortNames}
	}

	group := genericapiserver.NewDefaultAPIGroupInfo("", apiserver.Scheme, metav1.ParameterCodec, apiserver.Codecs)
	group.PrioritizedVersions = []schema.GroupVersion{corev1.SchemeGroupVersion}
	group.VersionedResourcesStorageMap[corev1.SchemeGroupVersion.Version] = resources
	if err := s.InstallLegacyAPIGroup(genericapiserver.DefaultLegacyAPIPrefix, &group); err != nil {
		return err
	}

	// Readiness waits for post-start hooks, so once /readyz is ok the usual
	// namespaces exist.
	return s.AddPostStartHook("hedgerow-initial-namespaces", func(hook genericapiserver.PostStartHookContext) error {
		client, err := kubernetes.NewForConfig(hook.LoopbackClientConfig)
		if err != nil {
			return err
		}
		return wait.PollUntilContextCancel(hook, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			for _, name := range initialNamespaces {
				ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
				if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
					return false, nil
				}
			}
			return true, nil
		})
	})
}

// coreREST adds the short names kubectl users type (kubectl get ns, cm).
type coreREST struct {
	*genericregistry.Store
	shortNames []string
}

func (r *coreREST) ShortNames() []string { return r.shortNames }

func newStore(k coreKind, restOptions generic.RESTOptionsGetter) (*genericregistry.Store, error) {
	gr := corev1.Resource(k.resource)
	s := strategy{ObjectTyper: apiserver.Scheme, NameGenerator: names.SimpleNameGenerator, kind: k}
	object, list := k.object, k.list
	store := &genericregistry.Store{
		NewFunc:                   func() runtime.Object { return object.DeepCopyObject() },
		NewListFunc:               func() runtime.Object { return list.DeepCopyObject() },
		DefaultQualifiedResource:  gr,
		SingularQualifiedResource: corev1.Resource(k.singular),
		CreateStrategy:            s,
		UpdateStrategy:            s,
		DeleteStrategy:            s,
		TableConvertor:            rest.NewDefaultTableConvertor(gr),
	}
	if k.ttl > 0 {
		ttl := uint64(k.ttl.Seconds())
		store.TTLFunc = func(runtime.Object, uint64, bool) (uint64, error) { return ttl, nil }
	}
	if err := store.CompleteWithOptions(&generic.StoreOptions{RESTOptions: restOptions, AttrFunc: k.attrs}); err != nil {
		return nil, err
	}
	return store, nil
}
