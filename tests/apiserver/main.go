// Command hedgerow-test-apiserver is a CRD-serving Kubernetes API server for
// Hedgerow's tests, built only from the Kubernetes libraries that Debian
// packages as Go source (see build.sh).
//
// It is the upstream apiextensions-apiserver with what a real control plane
// would normally supply and a standalone one lacks, so that kubectl, the
// kubernetes client and kopf work against it:
//
//   - no core kube-apiserver to delegate authn/authz, admission or
//     priority-and-fairness to (client certificates + system:masters only);
//   - root discovery: /apis (aggregated v2 and the legacy APIGroupList) and /api;
//   - OpenAPI v2 and v3, which the CRD OpenAPI controllers need to start;
//   - plain etcd-backed core/v1 namespaces, events, configmaps and secrets.
//
// There is no controller-manager: no garbage collection, no namespace cleanup.
package main

import (
	"context"
	"fmt"
	"net"
	"os"

	"github.com/spf13/cobra"
	noopoteltrace "go.opentelemetry.io/otel/trace/noop"

	"k8s.io/apiextensions-apiserver/pkg/apiserver"
	"k8s.io/apiextensions-apiserver/pkg/cmd/server/options"
	generatedopenapi "k8s.io/apiextensions-apiserver/pkg/generated/openapi"
	"k8s.io/apiserver/pkg/endpoints/discovery/aggregated"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/apiserver/pkg/util/openapi"
	"k8s.io/apiserver/pkg/util/webhook"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/version/verflag"
	"k8s.io/klog/v2"
)

func main() {
	ctx := genericapiserver.SetupSignalContext()
	o := newOptions()

	cmd := &cobra.Command{
		Use:          "hedgerow-test-apiserver",
		Short:        "CRD-serving Kubernetes API server for tests (no controllers)",
		SilenceUsage: true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			return o.ServerRunOptions.ComponentGlobalsRegistry.Set()
		},
		RunE: func(c *cobra.Command, _ []string) error {
			verflag.PrintAndExitIfRequested()
			if err := o.Complete(); err != nil {
				return err
			}
			if err := o.Validate(); err != nil {
				return err
			}
			return run(c.Context(), o)
		},
	}
	cmd.SetContext(ctx)
	o.AddFlags(cmd.Flags())
	verflag.AddFlags(cmd.Flags())
	os.Exit(cli.Run(cmd))
}

// newOptions starts from the upstream options and removes everything that
// needs a core kube-apiserver behind it.
func newOptions() *options.CustomResourceDefinitionsServerOptions {
	o := options.NewCustomResourceDefinitionsServerOptions(os.Stdout, os.Stderr)
	ro := o.RecommendedOptions
	// CoreAPI would make the server watch a core cluster through a kubeconfig.
	ro.CoreAPI = nil
	// The admission plugins (namespace lifecycle, webhooks) all need informers
	// over a core cluster; tests rely on validation done by the CRD schema.
	ro.Admission = nil
	// Without a remote kubeconfig, authentication is by client certificate
	// (--client-ca-file) only and authorization is "system:masters may do
	// anything", which is exactly what a test harness needs.
	ro.Authentication.RemoteKubeConfigFileOptional = true
	ro.Authorization.RemoteKubeConfigFileOptional = true
	// Priority-and-fairness reads its configuration from flowcontrol objects
	// that only a core cluster serves.
	ro.Features.EnablePriorityAndFairness = false
	return o
}

func run(ctx context.Context, o *options.CustomResourceDefinitionsServerOptions) error {
	config, err := newConfig(o)
	if err != nil {
		return err
	}

	// The CRD handler passes every request it does not own (/apis itself
	// included) to its delegate; this one answers /apis from the shared
	// aggregated discovery manager.
	rootDiscovery := newRootDiscovery(config.GenericConfig.AggregatedDiscoveryGroupManager, apiserver.Codecs)
	server, err := config.Complete().New(genericapiserver.NewEmptyDelegateWithCustomHandler(rootDiscovery))
	if err != nil {
		return err
	}
	if err := installCoreV1(server.GenericAPIServer, o, config.GenericConfig); err != nil {
		return err
	}
	klog.Info("hedgerow test apiserver: CRDs + core/v1 namespaces, events, configmaps, secrets")
	return server.GenericAPIServer.PrepareRun().RunWithContext(ctx)
}

// newConfig mirrors options.Config() from upstream, minus the parts that
// assume a core cluster (its webhook service resolver needs a Service informer).
func newConfig(o *options.CustomResourceDefinitionsServerOptions) (*apiserver.Config, error) {
	if err := o.RecommendedOptions.SecureServing.MaybeDefaultWithSelfSignedCerts("localhost", nil, []net.IP{net.ParseIP("127.0.0.1")}); err != nil {
		return nil, fmt.Errorf("error creating self-signed certificates: %w", err)
	}

	serverConfig := genericapiserver.NewRecommendedConfig(apiserver.Codecs)
	// Owned here rather than created inside New() so the /apis delegate above
	// can read what the CRD discovery controller publishes into it.
	serverConfig.AggregatedDiscoveryGroupManager = aggregated.NewResourceManager("apis")

	if err := o.ServerRunOptions.ApplyTo(&serverConfig.Config); err != nil {
		return nil, err
	}
	if err := o.RecommendedOptions.ApplyTo(serverConfig); err != nil {
		return nil, err
	}
	if err := o.APIEnablement.ApplyTo(&serverConfig.Config, apiserver.DefaultAPIResourceConfigSource(), apiserver.Scheme); err != nil {
		return nil, err
	}

	// Both versions are needed: the CRD OpenAPI controllers only start when
	// the v2 spec exists, and without them kubectl apply cannot download the
	// CRD schemas. The core/v1 kinds need definitions too: server-side apply
	// builds its type converter from them (see openapi.go).
	defs := openapi.GetOpenAPIDefinitionsWithoutDisabledFeatures(withCoreV1Definitions(generatedopenapi.GetOpenAPIDefinitions))
	namer := openapinamer.NewDefinitionNamer(apiserver.Scheme, scheme.Scheme)
	serverConfig.OpenAPIConfig = genericapiserver.DefaultOpenAPIConfig(defs, namer)
	serverConfig.OpenAPIConfig.Info.Title = "Hedgerow test apiserver"
	serverConfig.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(defs, namer)
	serverConfig.OpenAPIV3Config.Info.Title = "Hedgerow test apiserver"

	return &apiserver.Config{
		GenericConfig: serverConfig,
		ExtraConfig: apiserver.ExtraConfig{
			CRDRESTOptionsGetter: options.NewCRDRESTOptionsGetter(*o.RecommendedOptions.Etcd, serverConfig.ResourceTransformers, serverConfig.StorageObjectCountTracker),
			// Conversion webhooks resolve Services by DNS name; there is no
			// Service informer to look them up in.
			ServiceResolver:     webhook.NewDefaultServiceResolver(),
			AuthResolverWrapper: webhook.NewDefaultAuthenticationInfoResolverWrapper(nil, nil, serverConfig.LoopbackClientConfig, noopoteltrace.NewTracerProvider()),
		},
	}, nil
}
