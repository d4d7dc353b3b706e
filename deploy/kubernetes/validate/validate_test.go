// Package validate renders every kustomization under deploy/kubernetes with kustomize's own
// library (the engine of `kubectl kustomize`) and decodes each resource strictly into the Go
// types the API server itself uses (k8s.io/api) and KEDA's (keda.sh/v1alpha1): a misspelt or
// misplaced field fails, as does a kind this validator does not know. Then it checks what ties
// the resources together (every reference names a resource that is rendered).
//
//	cd deploy/kubernetes/validate && GOFLAGS=-mod=mod go test ./...
//
// `go test` caches a passing run until a file it read changes (files inside the module root,
// deploy/kubernetes, where go.mod is), so CI pays once.
package validate

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// The kinds the manifests may use, each with the Go type it must decode into.
var kinds = map[string]func() any{
	"v1/Namespace":                             func() any { return &corev1.Namespace{} },
	"v1/ConfigMap":                             func() any { return &corev1.ConfigMap{} },
	"v1/Service":                               func() any { return &corev1.Service{} },
	"v1/ServiceAccount":                        func() any { return &corev1.ServiceAccount{} },
	"apps/v1/Deployment":                       func() any { return &appsv1.Deployment{} },
	"apps/v1/DaemonSet":                        func() any { return &appsv1.DaemonSet{} },
	"apps/v1/StatefulSet":                      func() any { return &appsv1.StatefulSet{} },
	"autoscaling/v2/HorizontalPodAutoscaler":   func() any { return &autoscalingv2.HorizontalPodAutoscaler{} },
	"policy/v1/PodDisruptionBudget":            func() any { return &policyv1.PodDisruptionBudget{} },
	"rbac.authorization.k8s.io/v1/Role":        func() any { return &rbacv1.Role{} },
	"rbac.authorization.k8s.io/v1/RoleBinding": func() any { return &rbacv1.RoleBinding{} },
	"keda.sh/v1alpha1/ScaledObject":            func() any { return &kedav1alpha1.ScaledObject{} },
}

// Decoded is one rendered resource, decoded into its Go type.
type Decoded struct {
	Kind, Name string
	Object     any
}

// Render builds one kustomization directory, as `kubectl kustomize DIR` does.
func Render(dir string) ([][]byte, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, err
	}
	var docs [][]byte
	for _, r := range m.Resources() {
		b, err := r.AsYAML()
		if err != nil {
			return nil, err
		}
		docs = append(docs, b)
	}
	return docs, nil
}

// DecodeStrict decodes one manifest into the Go type of its apiVersion/kind as the API server's
// strict field validation does: YAML to JSON refusing duplicate keys (sigs.k8s.io/yaml), then
// sigs.k8s.io/json's case-sensitive decoder with DisallowUnknownFields (encoding/json alone
// would accept "metaData" for "metadata").
func DecodeStrict(doc []byte) (Decoded, error) {
	var meta struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	if err := yaml.Unmarshal(doc, &meta); err != nil {
		return Decoded{}, err
	}
	key := meta.APIVersion + "/" + meta.Kind
	newObject, ok := kinds[key]
	if !ok {
		return Decoded{}, fmt.Errorf("%s %q: kind not known to this validator", key, meta.Metadata.Name)
	}
	obj := newObject()
	data, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return Decoded{}, fmt.Errorf("%s %q: %w", key, meta.Metadata.Name, err)
	}
	strict, err := kjson.UnmarshalStrict(data, obj)
	if err != nil {
		return Decoded{}, fmt.Errorf("%s %q: %w", key, meta.Metadata.Name, err)
	}
	if len(strict) > 0 {
		return Decoded{}, fmt.Errorf("%s %q: %w", key, meta.Metadata.Name, errors.Join(strict...))
	}
	return Decoded{Kind: meta.Kind, Name: meta.Metadata.Name, Object: obj}, nil
}

// kustomizations lists every directory with a kustomization.yaml that is not a Component.
func kustomizations(t *testing.T) []string {
	t.Helper()
	var dirs []string
	for _, pattern := range []string{"../base", "../overlays/*"} {
		found, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, found...)
	}
	sort.Strings(dirs)
	if len(dirs) < 3 {
		t.Fatalf("expected base and at least two overlays, found %v", dirs)
	}
	return dirs
}

func TestEveryManifestDecodesStrictly(t *testing.T) {
	for _, dir := range kustomizations(t) {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			docs, err := Render(dir)
			if err != nil {
				t.Fatalf("kustomize build %s: %v", dir, err)
			}
			var decoded []Decoded
			for _, doc := range docs {
				d, err := DecodeStrict(doc)
				if err != nil {
					t.Errorf("%s: %v", dir, err)
					continue
				}
				decoded = append(decoded, d)
			}
			for _, problem := range CheckReferences(decoded) {
				t.Errorf("%s: %s", dir, problem)
			}
			t.Logf("%s: %d resources", dir, len(decoded))
		})
	}
}

var timeLimit = regexp.MustCompile(`^--time-limit=(\d+)$`)

// CheckReferences finds references to resources that are not rendered, KEDA objects KEDA's own
// checks refuse, and worker pools whose grace period is shorter than their longest task.
func CheckReferences(decoded []Decoded) []string {
	have := map[string]bool{}
	for _, d := range decoded {
		have[d.Kind+"/"+d.Name] = true
	}
	// Created by hand (they hold secrets or files from outside deploy/kubernetes).
	external := map[string]bool{"Secret/celery-broker": true}
	var problems []string
	need := func(from, ref string, optional bool) {
		if !have[ref] && !external[ref] && !optional {
			problems = append(problems, fmt.Sprintf("%s refers to %s, which is not rendered", from, ref))
		}
	}
	podSpec := func(from string, spec corev1.PodSpec) {
		for _, v := range spec.Volumes {
			if v.ConfigMap != nil {
				need(from, "ConfigMap/"+v.ConfigMap.Name, v.ConfigMap.Optional != nil && *v.ConfigMap.Optional)
			}
		}
		if spec.ServiceAccountName != "" {
			need(from, "ServiceAccount/"+spec.ServiceAccountName, false)
		}
		for _, c := range spec.Containers {
			for _, e := range c.EnvFrom {
				if e.ConfigMapRef != nil {
					need(from, "ConfigMap/"+e.ConfigMapRef.Name, false)
				}
			}
			for _, e := range c.Env {
				if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
					need(from, "Secret/"+e.ValueFrom.SecretKeyRef.Name, false)
				}
			}
			if len(c.Command) > 2 && c.Command[1] == "celery" {
				for _, arg := range c.Command {
					if m := timeLimit.FindStringSubmatch(arg); m != nil {
						limit, _ := strconv.Atoi(m[1])
						if spec.TerminationGracePeriodSeconds == nil || *spec.TerminationGracePeriodSeconds <= int64(limit) {
							problems = append(problems, fmt.Sprintf("%s: terminationGracePeriodSeconds must exceed --time-limit=%d", from, limit))
						}
					}
				}
			}
		}
	}
	for _, d := range decoded {
		from := d.Kind + "/" + d.Name
		switch o := d.Object.(type) {
		case *appsv1.Deployment:
			podSpec(from, o.Spec.Template.Spec)
		case *appsv1.DaemonSet:
			podSpec(from, o.Spec.Template.Spec)
		case *appsv1.StatefulSet:
			podSpec(from, o.Spec.Template.Spec)
		case *autoscalingv2.HorizontalPodAutoscaler:
			need(from, o.Spec.ScaleTargetRef.Kind+"/"+o.Spec.ScaleTargetRef.Name, false)
		case *kedav1alpha1.ScaledObject:
			kind := o.Spec.ScaleTargetRef.Kind
			if kind == "" {
				kind = "Deployment"
			}
			need(from, kind+"/"+o.Spec.ScaleTargetRef.Name, false)
			if have["HorizontalPodAutoscaler/"+o.Spec.ScaleTargetRef.Name] {
				problems = append(problems, from+": its target also has an HPA (KEDA creates its own)")
			}
			for _, check := range []error{
				kedav1alpha1.ValidateTriggers(o.Spec.Triggers),
				kedav1alpha1.CheckReplicaCountBoundsAreValid(o),
				kedav1alpha1.CheckFallbackValid(o),
			} {
				if check != nil {
					problems = append(problems, fmt.Sprintf("%s: %v", from, check))
				}
			}
		}
	}
	return problems
}

// A field the API types do not have is refused, in core types and in KEDA's.
func TestUnknownFieldIsRejected(t *testing.T) {
	docs, err := Render("../base")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		kind  string
		path  []any // map keys and list indexes down to the map that gets the field
		field string
	}{
		{"Deployment", []any{"spec", "template", "spec"}, "containerz"},
		{"DaemonSet", []any{"spec", "template", "spec", "containers", 0}, "imagePullPolice"},
		{"ScaledObject", []any{"spec"}, "minReplicas"},
		{"ScaledObject", []any{"spec", "triggers", 0}, "metaData"},
	}
	for _, c := range cases {
		var doc []byte
		for _, d := range docs {
			if strings.Contains(string(d), "\nkind: "+c.kind+"\n") {
				doc = d
				break
			}
		}
		if doc == nil {
			t.Fatalf("no rendered %s", c.kind)
		}
		if _, err := DecodeStrict(doc); err != nil {
			t.Fatalf("the unedited %s must decode: %v", c.kind, err)
		}
		var tree map[string]any
		if err := yaml.Unmarshal(doc, &tree); err != nil {
			t.Fatal(err)
		}
		var node any = tree
		for _, step := range c.path {
			switch k := step.(type) {
			case string:
				node = node.(map[string]any)[k]
			case int:
				node = node.([]any)[k]
			}
		}
		node.(map[string]any)[c.field] = "x"
		edited, err := yaml.Marshal(tree)
		if err != nil {
			t.Fatal(err)
		}
		_, err = DecodeStrict(edited)
		if err == nil || !strings.Contains(err.Error(), "unknown field") || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%s with %q: want an unknown field error naming it, got %v", c.kind, c.field, err)
		}
	}
}

// A kind the validator does not know is refused rather than passed unchecked.
func TestUnknownKindIsRejected(t *testing.T) {
	_, err := DecodeStrict([]byte("apiVersion: keda.sh/v1alpha1\nkind: ScaledJob\nmetadata:\n  name: x\n"))
	if err == nil {
		t.Fatal("a ScaledJob (not in the table) must be refused")
	}
}

func TestMain(m *testing.M) {
	if _, err := os.Stat("../base/kustomization.yaml"); err != nil {
		fmt.Fprintln(os.Stderr, "run from deploy/kubernetes/validate:", err)
		os.Exit(2)
	}
	os.Exit(m.Run())
}

// The cross-checks find what they are for.
func TestReferenceChecksFindProblems(t *testing.T) {
	grace := int64(60)
	limit := []string{"opentelemetry-instrument", "celery", "-A", "app", "worker", "--time-limit=300"}
	broken := []Decoded{
		{Kind: "ScaledObject", Name: "so", Object: &kedav1alpha1.ScaledObject{
			Spec: kedav1alpha1.ScaledObjectSpec{ScaleTargetRef: &kedav1alpha1.ScaleTarget{Name: "missing"}}}},
		{Kind: "Deployment", Name: "w", Object: &appsv1.Deployment{Spec: appsv1.DeploymentSpec{
			Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
				TerminationGracePeriodSeconds: &grace,
				Containers:                    []corev1.Container{{Name: "w", Command: limit}},
			}}}}},
	}
	problems := strings.Join(CheckReferences(broken), "\n")
	for _, want := range []string{"Deployment/missing, which is not rendered", "must exceed --time-limit=300",
		"no triggers"} {
		if !strings.Contains(problems, want) {
			t.Errorf("want a problem containing %q, got:\n%s", want, problems)
		}
	}
}

// The ConfigMaps the Collectors mount hold the config files byte for byte: the files
// tests/test_scale_out.py runs are the ones the cluster runs.
func TestCollectorConfigMapsAreTheFiles(t *testing.T) {
	docs, err := Render("../overlays/mimir")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"agent.yaml":         "../base/collector/agent.yaml",
		"gateway.yaml":       "../base/collector/gateway.yaml",
		"tail-sampling.yaml": "../components/tail-sampling/tail-sampling.yaml",
	}
	found := map[string]bool{}
	for _, doc := range docs {
		d, err := DecodeStrict(doc)
		if err != nil {
			t.Fatal(err)
		}
		cm, ok := d.Object.(*corev1.ConfigMap)
		if !ok {
			continue
		}
		for key, path := range want {
			if data, ok := cm.Data[key]; ok {
				file, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				if data != string(file) {
					t.Errorf("ConfigMap %s key %s differs from %s", cm.Name, key, path)
				}
				found[key] = true
			}
		}
	}
	for key := range want {
		if !found[key] {
			t.Errorf("no rendered ConfigMap holds %s", key)
		}
	}
}
