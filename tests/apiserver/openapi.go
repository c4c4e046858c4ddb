package main

import (
	"reflect"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kube-openapi/pkg/common"
	openapiutil "k8s.io/kube-openapi/pkg/util"
	"k8s.io/kube-openapi/pkg/validation/spec"
)

// withCoreV1Definitions adds OpenAPI definitions for the core kinds to the
// generated ones (which cover apiextensions and meta/v1). The real core
// definitions are generated inside k8s.io/kubernetes, which Debian does not
// package, so these are derived from the Go types by reflection: field names
// from the json tags and patch strategies from the struct tags. That is
// enough for server-side apply to track fields, for kubectl apply to compute
// strategic merge patches without warnings, and for kubectl explain.
func withCoreV1Definitions(base common.GetOpenAPIDefinitions) common.GetOpenAPIDefinitions {
	return func(ref common.ReferenceCallback) map[string]common.OpenAPIDefinition {
		b := &schemaBuilder{ref: ref, defs: base(ref)}
		for _, k := range coreKinds {
			b.schemaFor(reflect.TypeOf(k.object))
			b.schemaFor(reflect.TypeOf(k.list))
		}
		return b.defs
	}
}

var (
	timeType      = reflect.TypeOf(metav1.Time{})
	microTimeType = reflect.TypeOf(metav1.MicroTime{})
)

type schemaBuilder struct {
	ref  common.ReferenceCallback
	defs map[string]common.OpenAPIDefinition
}

func simple(typ, format string) spec.Schema {
	return spec.Schema{SchemaProps: spec.SchemaProps{Type: []string{typ}, Format: format}}
}

// schemaFor returns the schema to embed for t (a $ref for structs, whose
// definitions it adds) and the definitions that schema depends on.
func (b *schemaBuilder) schemaFor(t reflect.Type) (spec.Schema, []string) {
	if t == timeType || t == microTimeType {
		return simple("string", "date-time"), nil
	}
	switch t.Kind() {
	case reflect.Pointer:
		return b.schemaFor(t.Elem())
	case reflect.String:
		return simple("string", ""), nil
	case reflect.Bool:
		return simple("boolean", ""), nil
	case reflect.Int32, reflect.Int16, reflect.Int8, reflect.Uint16, reflect.Uint8:
		return simple("integer", "int32"), nil
	case reflect.Int, reflect.Int64, reflect.Uint, reflect.Uint32, reflect.Uint64:
		return simple("integer", "int64"), nil
	case reflect.Float32, reflect.Float64:
		return simple("number", "double"), nil
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return simple("string", "byte"), nil
		}
		item, deps := b.schemaFor(t.Elem())
		s := simple("array", "")
		s.Items = &spec.SchemaOrArray{Schema: &item}
		return s, deps
	case reflect.Map:
		value, deps := b.schemaFor(t.Elem())
		s := simple("object", "")
		s.AdditionalProperties = &spec.SchemaOrBool{Allows: true, Schema: &value}
		return s, deps
	case reflect.Struct:
		name := openapiutil.GetCanonicalTypeName(reflect.New(t).Interface())
		if _, known := b.defs[name]; !known {
			b.defs[name] = common.OpenAPIDefinition{} // placeholder against recursion
			b.defs[name] = b.structDefinition(t)
		}
		return spec.Schema{SchemaProps: spec.SchemaProps{Ref: b.ref(name)}}, []string{name}
	}
	return spec.Schema{}, nil
}

func (b *schemaBuilder) structDefinition(t reflect.Type) common.OpenAPIDefinition {
	def := common.OpenAPIDefinition{Schema: simple("object", "")}
	def.Schema.Properties = map[string]spec.Schema{}
	b.addFields(t, &def)
	return def
}

func (b *schemaBuilder) addFields(t reflect.Type, def *common.OpenAPIDefinition) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
		if !f.IsExported() || name == "-" {
			continue
		}
		if name == "" && (f.Anonymous || strings.Contains(opts, "inline")) {
			b.addFields(f.Type, def) // e.g. TypeMeta's kind and apiVersion
			continue
		}
		if name == "" {
			name = f.Name
		}
		s, deps := b.schemaFor(f.Type)
		if v := f.Tag.Get("patchStrategy"); v != "" {
			s.AddExtension("x-kubernetes-patch-strategy", v)
		}
		if v := f.Tag.Get("patchMergeKey"); v != "" {
			s.AddExtension("x-kubernetes-patch-merge-key", v)
		}
		def.Schema.Properties[name] = s
		def.Dependencies = append(def.Dependencies, deps...)
	}
}
