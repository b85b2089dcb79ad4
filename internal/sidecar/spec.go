package sidecar

import (
	"fmt"
	"strings"
	"time"

	"github.com/credbroker/credbroker/attest"
)

// ParseSpec parses the --credential syntax
//
//	NAME=PROFILE[@NAMESPACE/CLUSTER][,ttl=DURATION]
//
// e.g. "capa=capa-controller@default/prod-1,ttl=30m". NAME is letters,
// digits, '.', '_' and '-' (it appears in the URL and as a section of the
// shared-credentials file).
func ParseSpec(s string) (Spec, error) {
	main, opts, _ := strings.Cut(s, ",")
	name, target, ok := strings.Cut(main, "=")
	if !ok {
		return Spec{}, fmt.Errorf("sidecar: credential %q: want NAME=PROFILE[@NAMESPACE/CLUSTER][,ttl=DURATION]", s)
	}
	if err := checkName(name); err != nil {
		return Spec{}, fmt.Errorf("sidecar: credential %q: %w", s, err)
	}
	spec := Spec{Name: name}
	spec.Profile, spec.Cluster, _ = strings.Cut(target, "@")
	if spec.Profile == "" {
		return Spec{}, fmt.Errorf("sidecar: credential %q: profile is empty", s)
	}
	if err := CheckCluster(spec.Cluster); err != nil {
		return Spec{}, fmt.Errorf("sidecar: credential %q: %w", s, err)
	}
	if strings.Contains(main, "@") && spec.Cluster == "" {
		return Spec{}, fmt.Errorf("sidecar: credential %q: cluster after '@' is empty", s)
	}
	if opts != "" {
		for opt := range strings.SplitSeq(opts, ",") {
			k, v, _ := strings.Cut(opt, "=")
			if k != "ttl" {
				return Spec{}, fmt.Errorf("sidecar: credential %q: unknown option %q (only ttl=DURATION)", s, opt)
			}
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return Spec{}, fmt.Errorf("sidecar: credential %q: ttl %q: want a positive duration such as 30m", s, v)
			}
			spec.TTL = d
		}
	}
	return spec, nil
}

// CheckCluster accepts "" or NAMESPACE/NAME with Kubernetes names (what the
// broker accepts: attest.ParseClusterRef).
func CheckCluster(c string) error {
	if c == "" {
		return nil
	}
	_, err := attest.ParseClusterRef(c)
	return err
}

func checkName(n string) error {
	if n == "" {
		return fmt.Errorf("name is empty")
	}
	for _, r := range n {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Errorf("name %q: use letters, digits, '.', '_' and '-'", n)
		}
	}
	return nil
}
