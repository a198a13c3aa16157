package kubernetes

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	k8s "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// NewClientset connects to the Kubernetes API described by a kubeconfig file
// (a leading "~/" is the home directory) or, when kubeconfig is empty, by the
// in-cluster configuration of the pod Bowline runs in (its service account).
// It only builds the client: nothing is contacted until the source runs.
func NewClientset(kubeconfig string) (k8s.Interface, error) {
	var cfg *rest.Config
	if kubeconfig == "" {
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("kubernetes: in-cluster configuration (set kubeconfig outside a cluster): %w", err)
		}
		cfg = c
	} else {
		path, err := expandHome(kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubernetes: kubeconfig %s: %w", kubeconfig, err)
		}
		c, err := clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			return nil, fmt.Errorf("kubernetes: kubeconfig %s: %w", path, err)
		}
		cfg = c
	}
	cfg.UserAgent = "bowline"
	cs, err := k8s.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes: client: %w", err)
	}
	return cs, nil
}

func expandHome(path string) (string, error) {
	if path != "~" && !strings.HasPrefix(path, "~/") {
		return path, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(home, strings.TrimPrefix(path, "~")), nil
}
