// Command kubelet_rules computes, with the kubelet's own code, what regcred's doctor must
// agree with: how an image reference is parsed (repository, tag, digest), the pull policy
// the API server defaults for it, and which `auths` entries of a Pod's pull secrets the
// kubelet would use for it (k8s.io/kubernetes/pkg/credentialprovider).
//
// It reads cases (JSON) on stdin and writes the expectations (JSON) on stdout; run it with
// scripts/kubelet_rules.py, which builds it against the control plane's Kubernetes version.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1defaults "k8s.io/kubernetes/pkg/apis/core/v1"
	"k8s.io/kubernetes/pkg/credentialprovider"
	credentialprovidersecrets "k8s.io/kubernetes/pkg/credentialprovider/secrets"
	"k8s.io/kubernetes/pkg/util/parsers"
)

type keyringCase struct {
	// Pull secrets in the Pod's order; each maps a secret name to its auths keys.
	Secrets []struct {
		Name string   `json:"name"`
		Keys []string `json:"keys"`
	} `json:"secrets"`
	Image string `json:"image"`
}

type cases struct {
	Images   []string      `json:"images"`
	Keyrings []keyringCase `json:"keyrings"`
}

type imageResult struct {
	Image       string `json:"image"`
	Error       bool   `json:"error"`
	Repository  string `json:"repository,omitempty"`
	Tag         string `json:"tag,omitempty"`
	Digest      string `json:"digest,omitempty"`
	PullPolicy  string `json:"defaultPullPolicy,omitempty"`
}

type match struct {
	Secret string `json:"secret"`
	Key    string `json:"key"`
}

type keyringResult struct {
	keyringCase
	Matches []match `json:"matches"`
}

type output struct {
	Generator         string          `json:"generator"`
	KubernetesVersion string          `json:"kubernetesVersion"`
	Images            []imageResult   `json:"images"`
	Keyrings          []keyringResult `json:"keyrings"`
}

func main() {
	var in cases
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fmt.Fprintln(os.Stderr, "kubelet_rules: bad cases on stdin:", err)
		os.Exit(2)
	}
	out := output{Generator: "scripts/kubelet_rules.py", KubernetesVersion: os.Getenv("KUBERNETES_VERSION")}
	for _, image := range in.Images {
		out.Images = append(out.Images, parseImage(image))
	}
	for _, c := range in.Keyrings {
		matches, err := lookup(c)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kubelet_rules:", err)
			os.Exit(1)
		}
		out.Keyrings = append(out.Keyrings, keyringResult{keyringCase: c, Matches: matches})
	}
	encoder := json.NewEncoder(os.Stdout)
	encoder.SetIndent("", "  ")
	if err := encoder.Encode(out); err != nil {
		os.Exit(1)
	}
}

func parseImage(image string) imageResult {
	repo, tag, digest, err := parsers.ParseImageName(image)
	if err != nil {
		return imageResult{Image: image, Error: true}
	}
	container := v1.Container{Image: image}
	corev1defaults.SetDefaults_Container(&container)
	return imageResult{Image: image, Repository: repo, Tag: tag, Digest: digest,
		PullPolicy: string(container.ImagePullPolicy)}
}

// lookup is what the kubelet's image manager does for a Pod: a keyring from its pull
// secrets, then Lookup of the repository parsed from the image.
func lookup(c keyringCase) ([]match, error) {
	secrets := []v1.Secret{}
	for _, s := range c.Secrets {
		auths := map[string]map[string]string{}
		for _, key := range s.Keys {
			// The username marks which secret and key matched; nothing here is secret.
			auths[key] = map[string]string{"username": s.Name + "\x00" + key, "password": "x"}
		}
		data, err := json.Marshal(map[string]any{"auths": auths})
		if err != nil {
			return nil, err
		}
		secrets = append(secrets, v1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: s.Name, Namespace: "ns"},
			Type:       v1.SecretTypeDockerConfigJson,
			Data:       map[string][]byte{v1.DockerConfigJsonKey: data},
		})
	}
	keyring, err := credentialprovidersecrets.MakeDockerKeyring(secrets, credentialprovider.UnionDockerKeyring{})
	if err != nil {
		return nil, err
	}
	repo, _, _, err := parsers.ParseImageName(c.Image)
	if err != nil {
		return []match{}, nil // the kubelet fails the pull before any lookup
	}
	found, _ := keyring.Lookup(repo)
	matches := []match{}
	for _, auth := range found {
		var secret, key string
		for i := 0; i < len(auth.Username); i++ {
			if auth.Username[i] == 0 {
				secret, key = auth.Username[:i], auth.Username[i+1:]
			}
		}
		matches = append(matches, match{Secret: secret, Key: key})
	}
	return matches, nil
}
