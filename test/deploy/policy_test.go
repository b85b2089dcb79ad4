package deploy_test

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/credbroker/credbroker/broker/config"
)

// podSpec returns the pod template's spec of a workload object, or nil.
func podSpec(o object) map[string]any {
	switch o.kind() {
	case "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job":
		m, _ := get(o, "spec", "template", "spec").(map[string]any)
		return m
	case "Pod":
		m, _ := o["spec"].(map[string]any)
		return m
	}
	return nil
}

// TestRenderedObjectsFollowThePolicy checks what an admission policy
// (restricted Pod Security and the project's own rules) would: no container
// runs as root, privileged or with privilege escalation; root file systems
// are read-only; every capability is dropped; seccomp is RuntimeDefault; no
// hostPath, host namespaces or host ports; every container requests CPU and
// memory and has a memory limit; the broker's admin API is on no Service.
func TestRenderedObjectsFollowThePolicy(t *testing.T) {
	all := rendered(t)
	for _, name := range names(all) {
		t.Run(name, func(t *testing.T) {
			workloads := 0
			for _, o := range all[name] {
				spec := podSpec(o)
				if spec == nil {
					continue
				}
				workloads++
				for _, problem := range podProblems(spec) {
					t.Errorf("%s: %s", o, problem)
				}
			}
			if workloads == 0 {
				t.Fatal("no workload rendered")
			}
		})
	}
}

func podProblems(spec map[string]any) []string {
	var out []string
	bad := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	for _, k := range []string{"hostNetwork", "hostPID", "hostIPC"} {
		if spec[k] == true {
			bad("%s: true", k)
		}
	}
	for _, v := range list(spec["volumes"]) {
		if get(v, "hostPath") != nil {
			bad("volume %v is a hostPath", get(v, "name"))
		}
	}
	podSC := get(spec, "securityContext")
	if get(podSC, "runAsUser") == 0 {
		bad("pod runAsUser 0")
	}
	for _, c := range append(list(spec["initContainers"]), list(spec["containers"])...) {
		name := get(c, "name")
		sc := get(c, "securityContext")
		// A container setting wins over the pod's.
		eff := func(key string) any {
			if v := get(sc, key); v != nil {
				return v
			}
			return get(podSC, key)
		}
		if eff("runAsNonRoot") != true {
			bad("container %v: runAsNonRoot is not true", name)
		}
		if eff("runAsUser") == 0 {
			bad("container %v: runAsUser 0", name)
		}
		if get(sc, "privileged") == true {
			bad("container %v: privileged", name)
		}
		if get(sc, "allowPrivilegeEscalation") != false {
			bad("container %v: allowPrivilegeEscalation is not false", name)
		}
		if get(sc, "readOnlyRootFilesystem") != true {
			bad("container %v: readOnlyRootFilesystem is not true", name)
		}
		if drop := list(get(sc, "capabilities", "drop")); !slices.Contains(drop, any("ALL")) {
			bad("container %v: capabilities.drop does not hold ALL", name)
		}
		if len(list(get(sc, "capabilities", "add"))) > 0 {
			bad("container %v: adds capabilities", name)
		}
		if eff("seccompProfile") == nil || get(eff("seccompProfile"), "type") != "RuntimeDefault" {
			bad("container %v: seccompProfile is not RuntimeDefault", name)
		}
		for _, r := range []string{"cpu", "memory"} {
			if get(c, "resources", "requests", r) == nil {
				bad("container %v: no %s request", name, r)
			}
		}
		if get(c, "resources", "limits", "memory") == nil {
			bad("container %v: no memory limit", name)
		}
		for _, p := range list(get(c, "ports")) {
			if get(p, "hostPort") != nil {
				bad("container %v: hostPort", name)
			}
		}
	}
	return out
}

// TestAdminAPIIsOnNoService: the Services of the broker expose only the
// gRPC port (callers) and the HTTP port (metrics, discovery), each by the
// container port's name, and the broker's admin socket stays a unix socket
// in its data directory (no listener address in the configuration).
func TestAdminAPIIsOnNoService(t *testing.T) {
	all := rendered(t)
	for _, name := range []string{"single", "ha"} {
		objs := all[name]
		allowed := map[string]map[string]bool{
			"credbroker":      {"grpc": true},
			"credbroker-pods": {"http-metrics": true},
		}
		services := find(objs, "Service")
		if len(services) != len(allowed) {
			t.Errorf("%s: %d Services, want %d", name, len(services), len(allowed))
		}
		for _, s := range services {
			want, ok := allowed[s.name()]
			if !ok {
				t.Errorf("%s: unexpected %s", name, s)
				continue
			}
			for _, p := range list(get(s, "spec", "ports")) {
				if tp, _ := get(p, "targetPort").(string); !want[tp] {
					t.Errorf("%s: %s exposes target port %v; want only %v", name, s, get(p, "targetPort"), names(want))
				}
			}
		}
		for _, c := range brokerConfigs(t, objs) {
			var cfg struct {
				Admin struct{ Socket string } `yaml:"admin"`
			}
			if err := yaml.Unmarshal([]byte(c), &cfg); err != nil {
				t.Fatal(err)
			}
			if cfg.Admin.Socket != "" && !strings.HasPrefix(cfg.Admin.Socket, "/var/lib/credbroker/") {
				t.Errorf("%s: admin.socket %q is outside the pod's data directory", name, cfg.Admin.Socket)
			}
		}
	}
}

// brokerConfigs returns the credbroker.yaml of every credbroker-config
// ConfigMap in objs, failing unless there is exactly one.
func brokerConfigs(t *testing.T, objs []object) []string {
	t.Helper()
	var out []string
	for _, cm := range find(objs, "ConfigMap") {
		if strings.HasPrefix(cm.name(), "credbroker-config") {
			s, _ := get(cm, "data", "credbroker.yaml").(string)
			out = append(out, s)
		}
	}
	if len(out) != 1 {
		t.Fatalf("%d credbroker-config ConfigMaps with credbroker.yaml, want 1", len(out))
	}
	return out
}

// TestConfigMapsPassCheckConfig runs the broker's own `credbroker
// check-config` on the configuration each overlay ships, and checks that
// the StatefulSet mounts that ConfigMap where its args read it.
func TestConfigMapsPassCheckConfig(t *testing.T) {
	t.Parallel()
	all := rendered(t)
	for _, name := range []string{"single", "ha"} {
		cfg := brokerConfigs(t, all[name])[0]
		f := filepath.Join(t.TempDir(), "credbroker.yaml")
		if err := os.WriteFile(f, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(filepath.Join(binDir, "credbroker"), "check-config", f).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "configuration OK") {
			t.Errorf("%s: credbroker check-config: %v\n%s", name, err, out)
		}
		for _, want := range []string{"capa-controller", "node-token"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("%s: check-config does not list profile %s:\n%s", name, want, out)
			}
		}
		sts := find(all[name], "StatefulSet")
		if len(sts) != 1 {
			t.Fatalf("%s: %d StatefulSets", name, len(sts))
		}
		spec := podSpec(sts[0])
		var cmName string
		for _, v := range list(spec["volumes"]) {
			if get(v, "name") == "config" {
				cmName, _ = get(v, "configMap", "name").(string)
			}
		}
		if !strings.HasPrefix(cmName, "credbroker-config-") {
			t.Errorf("%s: the config volume mounts %q, not the generated credbroker-config", name, cmName)
		}
		// The kubelet's gRPC probes speak no TLS: they must ask the plain-text
		// health listener, which the configuration must open.
		broker := list(spec["containers"])[0]
		for probe, service := range map[string]any{"startupProbe": "liveness", "readinessProbe": nil, "livenessProbe": "liveness"} {
			if port := get(broker, probe, "grpc", "port"); port != 8445 || get(broker, probe, "grpc", "service") != service {
				t.Errorf("%s: %s is not a gRPC probe of port 8445, service %v (%v)", name, probe, service, get(broker, probe))
			}
		}
		if !strings.Contains(cfg, "\nhealth_listen: 0.0.0.0:8445\n") {
			t.Errorf("%s: the configuration does not serve grpc.health.v1 on health_listen 0.0.0.0:8445", name)
		}
		args := fmt.Sprint(get(broker, "args"))
		if !strings.Contains(args, "/etc/credbroker/credbroker.yaml") {
			t.Errorf("%s: broker args %s do not read /etc/credbroker/credbroker.yaml", name, args)
		}
	}
	if !strings.Contains(brokerConfigs(t, all["ha"])[0], "etcd:") || strings.Contains(brokerConfigs(t, all["single"])[0], "etcd:") {
		t.Error("the ha overlay's configuration must use state.etcd and the single one must not")
	}
	if r := get(find(all["ha"], "StatefulSet")[0], "spec", "replicas"); r != 3 {
		t.Errorf("ha: replicas %v, want 3", r)
	}
}

// registeredMetrics returns every metric name the shipped code registers: the
// string literals of the form credbroker_* in the module's non-test Go files.
func registeredMetrics(t *testing.T) map[string]bool {
	t.Helper()
	re := regexp.MustCompile(`^credbroker_[a-z0-9_]+$`)
	out := map[string]bool{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "test" || d.Name() == "deploy" || d.Name() == "tools" || strings.HasPrefix(d.Name(), ".")) && path != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if s, err := strconv.Unquote(lit.Value); err == nil && re.MatchString(s) {
					out[s] = true
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !out["credbroker_decisions_total"] {
		t.Fatalf("found no credbroker_decisions_total among %d names: the scan is broken", len(out))
	}
	return out
}

var (
	metricRE = regexp.MustCompile(`\bcredbroker_[a-z0-9_]+`)
	// rule="x" or rule=~"x|y" on credbroker_alerts_total
	alertRuleRE = regexp.MustCompile(`credbroker_alerts_total\{rule=~?"([^"]+)"`)
)

// TestAlertsAndDashboardNameRegisteredMetrics: every metric the
// PrometheusRule and the Grafana dashboard query is one the code registers
// (a histogram's _bucket, _sum and _count count as the histogram), and every
// alert rule they select on credbroker_alerts_total is a rule of the broker.
func TestAlertsAndDashboardNameRegisteredMetrics(t *testing.T) {
	t.Parallel()
	registered := registeredMetrics(t)
	rules := []string{config.AlertMassIssuance, config.AlertQuotaNearLimit, config.AlertDenialBurst, config.AlertThrottleBurst,
		config.AlertUnauthenticatedBurst, config.AlertAuditVerify, config.AlertRevocation, config.AlertApprovalRequested,
		config.AlertApprovalGranted, config.AlertApprovalDenied, config.AlertNodeEvicted}

	var exprs []string
	objs := rendered(t)["single"]
	pr := find(objs, "PrometheusRule")
	if len(pr) != 1 {
		t.Fatalf("%d PrometheusRules, want 1", len(pr))
	}
	alerts := map[string]bool{}
	for _, g := range list(get(pr[0], "spec", "groups")) {
		for _, r := range list(get(g, "rules")) {
			exprs = append(exprs, fmt.Sprint(get(r, "expr")))
			alerts[fmt.Sprint(get(r, "alert"))] = true
		}
	}
	for _, want := range []string{"CredbrokerMassIssuance", "CredbrokerQuotaNearLimit", "CredbrokerDenialBurst", "CredbrokerThrottleBurst",
		"CredbrokerAuditVerifyFailed", "CredbrokerUpstreamErrors", "CredbrokerSidecarCredentialNearExpiry"} {
		if !alerts[want] {
			t.Errorf("PrometheusRule has no alert %s", want)
		}
	}
	var dashboard string
	for _, cm := range find(objs, "ConfigMap") {
		if s, ok := get(cm, "data", "credbroker.json").(string); ok {
			dashboard = s
		}
	}
	if dashboard == "" {
		t.Fatal("no Grafana dashboard ConfigMap (data credbroker.json)")
	}
	for _, m := range regexp.MustCompile(`"expr":\s*"((?:[^"\\]|\\.)*)"`).FindAllStringSubmatch(dashboard, -1) {
		s, err := strconv.Unquote(`"` + m[1] + `"`)
		if err != nil {
			t.Fatal(err)
		}
		exprs = append(exprs, s)
	}
	if len(exprs) < 15 {
		t.Fatalf("only %d expressions found in the rules and the dashboard", len(exprs))
	}
	for _, e := range exprs {
		for _, name := range metricRE.FindAllString(e, -1) {
			base := name
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if b, ok := strings.CutSuffix(name, suffix); ok && registered[b] {
					base = b
				}
			}
			if !registered[base] {
				t.Errorf("%s (in %q) is not a metric the code registers", name, e)
			}
		}
		for _, m := range alertRuleRE.FindAllStringSubmatch(e, -1) {
			for _, r := range strings.Split(m[1], "|") {
				if !slices.Contains(rules, r) {
					t.Errorf("credbroker_alerts_total rule %q (in %q) is not an alert rule of the broker", r, e)
				}
			}
		}
	}
}

// TestCAPAComponent: CAPA's manager, with deploy/kustomize/components/capa
// added, gets its AWS credentials from the credbroker sidecar only — the
// container-credentials variables point at the sidecar on loopback with the
// token it writes, CAPA's static credentials (file variable, Secret volume)
// are gone, and the sidecar takes its identity from the Workload API through
// the SPIFFE CSI driver. Its metrics are on a port of their own, which a
// PodMonitor selecting the manager's pods scrapes (with alerts for when it
// cannot), and no probe makes the pod's readiness or the sidecar's life
// depend on the broker.
func TestCAPAComponent(t *testing.T) {
	objs := rendered(t)["capa"]
	var deploy object
	for _, d := range find(objs, "Deployment") {
		if d.name() == "capa-controller-manager" {
			deploy = d
		}
	}
	if deploy == nil {
		t.Fatal("no capa-controller-manager Deployment rendered")
	}
	spec := podSpec(deploy)
	containers := map[string]any{}
	for _, c := range list(spec["containers"]) {
		containers[fmt.Sprint(get(c, "name"))] = c
	}
	manager, sidecar := containers["manager"], containers["credbroker-sidecar"]
	if manager == nil || sidecar == nil {
		t.Fatalf("containers %v, want manager and credbroker-sidecar", names(containers))
	}
	env := map[string]any{}
	for _, e := range list(get(manager, "env")) {
		env[fmt.Sprint(get(e, "name"))] = get(e, "value")
	}
	if env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] != "http://127.0.0.1:9911/v1/credentials/default" ||
		env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] != "/var/run/credbroker/token" {
		t.Errorf("manager env %v: the container-credentials variables do not point at the sidecar", env)
	}
	if _, ok := env["AWS_SHARED_CREDENTIALS_FILE"]; ok {
		t.Error("the manager still reads CAPA's static credentials file")
	}
	args := fmt.Sprint(get(sidecar, "args"))
	for _, want := range []string{"--listen=127.0.0.1:9911", "--metrics-listen=:9912", "--token-file=/var/run/credbroker/token", "--workload-api-socket=unix:///run/spire/sockets/", "--credential=default=capa-controller"} {
		if !strings.Contains(args, want) {
			t.Errorf("sidecar args %s lack %s", args, want)
		}
	}
	ports := list(get(sidecar, "ports"))
	if len(ports) != 1 || get(ports[0], "name") != "sidecar-metrics" || get(ports[0], "containerPort") != 9912 {
		t.Errorf("sidecar ports %v, want only sidecar-metrics on 9912 (--metrics-listen)", ports)
	}
	for _, probe := range []string{"readinessProbe", "startupProbe", "livenessProbe"} {
		if get(sidecar, probe) != nil {
			t.Errorf("the sidecar has a %s: a broker outage or a starved metrics port would take CAPA's pod down", probe)
		}
	}
	monitors := find(objs, "PodMonitor")
	if len(monitors) != 1 {
		t.Fatalf("%d PodMonitors, want 1 for the sidecar", len(monitors))
	}
	pm := monitors[0]
	if pm.namespace() != deploy.namespace() {
		t.Errorf("%s is not in the manager's namespace %s", pm, deploy.namespace())
	}
	selector, _ := get(pm, "spec", "selector", "matchLabels").(map[string]any)
	podLabels, _ := get(deploy, "spec", "template", "metadata", "labels").(map[string]any)
	if len(selector) == 0 || get(selector, "control-plane") != "capa-controller-manager" {
		t.Errorf("%s selects %v, want CAPA's manager (control-plane: capa-controller-manager)", pm, selector)
	}
	for k, v := range selector {
		if podLabels[k] != v {
			t.Errorf("%s selects %s=%v, which the manager's pods (%v) do not carry", pm, k, v, podLabels)
		}
	}
	// The sidecar's scrape is watched too: the operator names its job
	// NAMESPACE/NAME, which the component's own alerts select.
	job := fmt.Sprintf(`up{job="%s/%s"}`, pm.namespace(), pm.name())
	sidecarAlerts := map[string]string{}
	for _, pr := range find(objs, "PrometheusRule") {
		for _, g := range list(get(pr, "spec", "groups")) {
			for _, r := range list(get(g, "rules")) {
				sidecarAlerts[fmt.Sprint(get(r, "alert"))] = fmt.Sprint(get(r, "expr"))
			}
		}
	}
	for _, alert := range []string{"CredbrokerSidecarMetricsDown", "CredbrokerSidecarAbsent"} {
		if !strings.Contains(sidecarAlerts[alert], job) {
			t.Errorf("alert %s is %q, want one on %s", alert, sidecarAlerts[alert], job)
		}
	}
	endpoints := list(get(pm, "spec", "podMetricsEndpoints"))
	if len(endpoints) != 1 || get(endpoints[0], "port") != "sidecar-metrics" || get(endpoints[0], "path") != "/metrics" {
		t.Errorf("%s scrapes %v, want port sidecar-metrics path /metrics", pm, endpoints)
	}
	volumes := map[string]any{}
	for _, v := range list(spec["volumes"]) {
		volumes[fmt.Sprint(get(v, "name"))] = v
		if get(v, "secret") != nil {
			t.Errorf("volume %v mounts a Secret (CAPA's static credentials?)", get(v, "name"))
		}
	}
	if get(volumes["spiffe-workload-api"], "csi", "driver") != "csi.spiffe.io" {
		t.Errorf("the Workload API socket does not come through the SPIFFE CSI driver: %v", volumes["spiffe-workload-api"])
	}
	ids := find(objs, "ClusterSPIFFEID")
	if len(ids) != 1 || get(ids[0], "spec", "podSelector", "matchLabels", "control-plane") != "capa-controller-manager" {
		t.Errorf("no ClusterSPIFFEID selecting CAPA's manager: %v", ids)
	}
}

// TestNetworkPolicy: the broker's pods admit the gRPC port only from CAPA's
// manager and the workload clusters' node ranges, the HTTP port only from
// Prometheus, and nothing else (no rule without sources, none for other
// ports).
func TestNetworkPolicy(t *testing.T) {
	for _, name := range []string{"single", "ha"} {
		nps := find(rendered(t)[name], "NetworkPolicy")
		if len(nps) != 1 {
			t.Fatalf("%s: %d NetworkPolicies, want 1", name, len(nps))
		}
		np := nps[0]
		if get(np, "spec", "podSelector", "matchLabels", "app.kubernetes.io/name") != "credbroker" {
			t.Errorf("%s: the NetworkPolicy does not select the broker's pods", name)
		}
		for _, rule := range list(get(np, "spec", "ingress")) {
			ports := list(get(rule, "ports"))
			from := list(get(rule, "from"))
			if len(ports) != 1 || len(from) == 0 {
				t.Errorf("%s: ingress rule %v must name one port and its sources", name, rule)
				continue
			}
			switch port := get(ports[0], "port"); port {
			case "grpc":
				for _, f := range from {
					ns := get(f, "namespaceSelector", "matchLabels", "kubernetes.io/metadata.name")
					if !(ns == "capa-system" && get(f, "podSelector") != nil) && get(f, "ipBlock", "cidr") == nil {
						t.Errorf("%s: the gRPC port admits %v", name, f)
					}
				}
			case "http-metrics":
				for _, f := range from {
					if get(f, "podSelector", "matchLabels", "app.kubernetes.io/name") != "prometheus" {
						t.Errorf("%s: the HTTP port admits %v", name, f)
					}
				}
			default:
				t.Errorf("%s: ingress to port %v", name, port)
			}
		}
	}
}

// TestNoRBAC: the broker gets no Kubernetes API access at all — no Role,
// ClusterRole or binding, and no service account token in its pods (PSATs
// are verified offline, its identity comes from the Workload API).
func TestNoRBAC(t *testing.T) {
	for _, name := range []string{"single", "ha"} {
		objs := rendered(t)[name]
		for _, kind := range []string{"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "Secret"} {
			if found := find(objs, kind); len(found) > 0 {
				t.Errorf("%s: renders %v", name, found)
			}
		}
		sas := find(objs, "ServiceAccount")
		if len(sas) != 1 || sas[0]["automountServiceAccountToken"] != false {
			t.Errorf("%s: service accounts %v, want one without automounted tokens", name, sas)
		}
		spec := podSpec(find(objs, "StatefulSet")[0])
		if spec["automountServiceAccountToken"] != false || spec["serviceAccountName"] != sas[0].name() {
			t.Errorf("%s: the broker's pods run as %v with automountServiceAccountToken %v", name, spec["serviceAccountName"], spec["automountServiceAccountToken"])
		}
	}
}

// TestHAKeysInstalled: the broker reads private keys only from files it owns
// with mode 0600, which a Secret volume (owned by root) cannot give; the ha
// overlay's init container copies them into the keys emptyDir. Every file
// the ha configuration names there must be one the init container copies.
func TestHAKeysInstalled(t *testing.T) {
	objs := rendered(t)["ha"]
	var cfg struct {
		Issuers map[string]struct {
			JWT *struct {
				KeyFile string `yaml:"key_file"`
			} `yaml:"jwt"`
		} `yaml:"issuers"`
		NodeAttestation struct {
			CADir string `yaml:"ca_dir"`
		} `yaml:"node_attestation"`
		State struct {
			Etcd struct {
				TLS struct{ CA, Cert, Key string } `yaml:"tls"`
			} `yaml:"etcd"`
		} `yaml:"state"`
	}
	if err := yaml.Unmarshal([]byte(brokerConfigs(t, objs)[0]), &cfg); err != nil {
		t.Fatal(err)
	}
	files := []string{cfg.State.Etcd.TLS.CA, cfg.State.Etcd.TLS.Cert, cfg.State.Etcd.TLS.Key,
		cfg.NodeAttestation.CADir + "/ca.pem", cfg.NodeAttestation.CADir + "/ca_key.pem", cfg.NodeAttestation.CADir + "/jwt_key.pem"}
	for _, iss := range cfg.Issuers {
		if iss.JWT != nil && iss.JWT.KeyFile != "" {
			files = append(files, iss.JWT.KeyFile)
		}
	}
	spec := podSpec(find(objs, "StatefulSet")[0])
	inits := list(spec["initContainers"])
	if len(inits) != 1 {
		t.Fatalf("%d init containers, want the one that installs the keys", len(inits))
	}
	script := fmt.Sprint(get(inits[0], "command"))
	if !strings.Contains(script, "umask 077") {
		t.Error("the init container does not create the keys owner-only (umask 077)")
	}
	const mount = "/var/run/credbroker-keys/"
	for _, f := range files {
		rel, ok := strings.CutPrefix(f, mount)
		if !ok {
			t.Errorf("%s is not in the keys volume %s", f, mount)
			continue
		}
		dir, base := filepath.Split(rel)
		if !strings.Contains(script, "/"+base+" ") && !strings.HasSuffix(strings.TrimSuffix(script, "]"), "/"+base) {
			t.Errorf("the init container does not copy %s", base)
		}
		if dir != "" && !strings.Contains(script, "/keys/"+dir) {
			t.Errorf("the init container does not copy into /keys/%s", dir)
		}
	}
}
