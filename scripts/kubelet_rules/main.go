// Command kubelet_rules computes, with the kubelet's own code, what regcred's doctor must
// agree with: how an image reference is parsed (repository, tag, digest), the pull policy
// the API server defaults for it, and which `auths` entries of a Pod's pull secrets the
// kubelet would use for it (k8s.io/kubernetes/pkg/credentialprovider); and, for a corpus of
// `.dockerconfigjson` contents, what the kubelet makes of each pull secret: whether it parses,
// the username, password and email it reads for each `auths` key, and the credentials it
// would send for some images. Credentials are reported as SHA-256 digests, never as values.
//
// It reads cases (JSON) on stdin and writes the expectations (JSON) on stdout; run it with
// scripts/kubelet_rules.py, which builds it against the control plane's Kubernetes version.
package main

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"sort"

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

// configCase is one `.dockerconfigjson` content: `config` as text, or `configBase64` for
// bytes that are not UTF-8; `images` to look up in the keyring the kubelet builds from it.
type configCase struct {
	Name         string   `json:"name"`
	Config       *string  `json:"config,omitempty"`
	ConfigBase64 string   `json:"configBase64,omitempty"`
	Images       []string `json:"images,omitempty"`
}

type cases struct {
	Images   []string      `json:"images"`
	Keyrings []keyringCase `json:"keyrings"`
	Configs  []configCase  `json:"configs"`
}

type imageResult struct {
	Image      string `json:"image"`
	Error      bool   `json:"error"`
	Repository string `json:"repository,omitempty"`
	Tag        string `json:"tag,omitempty"`
	Digest     string `json:"digest,omitempty"`
	PullPolicy string `json:"defaultPullPolicy,omitempty"`
}

type match struct {
	Secret string `json:"secret"`
	Key    string `json:"key"`
}

type keyringResult struct {
	keyringCase
	Matches []match `json:"matches"`
}

// credential is what the kubelet reads for one entry, as SHA-256 hex digests.
type credential struct {
	Username string `json:"username"`
	Password string `json:"password"`
	Email    string `json:"email"`
}

type entryResult struct {
	Key string `json:"key"`
	credential
}

type lookupResult struct {
	Image string `json:"image"`
	// Sorted: entries filed under one keyring key come in Go map order, which is random.
	Credentials []credential `json:"credentials"`
}

type configResult struct {
	Name string `json:"name"`
	// Error: the kubelet cannot build a keyring from the secret, so every pull of a Pod
	// that lists it fails.
	Error   bool           `json:"error"`
	Entries []entryResult  `json:"entries"`
	Lookups []lookupResult `json:"lookups"`
}

type output struct {
	Generator         string          `json:"generator"`
	KubernetesVersion string          `json:"kubernetesVersion"`
	Images            []imageResult   `json:"images"`
	Keyrings          []keyringResult `json:"keyrings"`
	Configs           []configResult  `json:"configs"`
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
	for _, c := range in.Configs {
		result, err := readConfig(c)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kubelet_rules:", c.Name+":", err)
			os.Exit(1)
		}
		out.Configs = append(out.Configs, result)
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

func digest(value string) string {
	sum := sha256.Sum256([]byte(value))
	return hex.EncodeToString(sum[:])
}

func credentialOf(username, password, email string) credential {
	return credential{Username: digest(username), Password: digest(password), Email: digest(email)}
}

// readConfig is what the kubelet does with a Pod's pull secret holding `c`: the keyring
// MakeDockerKeyring builds (an error fails every pull of the Pod), the entries it files
// (the same json.Unmarshal into credentialprovider.DockerConfigJSON), and Lookup.
func readConfig(c configCase) (configResult, error) {
	var data []byte
	if c.Config != nil {
		data = []byte(*c.Config)
	} else {
		decoded, err := base64.StdEncoding.DecodeString(c.ConfigBase64)
		if err != nil {
			return configResult{}, fmt.Errorf("bad configBase64: %w", err)
		}
		data = decoded
	}
	result := configResult{Name: c.Name, Entries: []entryResult{}, Lookups: []lookupResult{}}
	secret := v1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "pull", Namespace: "ns", UID: "uid"},
		Type:       v1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{v1.DockerConfigJsonKey: data},
	}
	keyring, err := credentialprovidersecrets.MakeDockerKeyring([]v1.Secret{secret}, credentialprovider.UnionDockerKeyring{})
	if err != nil {
		result.Error = true
		return result, nil
	}
	if len(data) > 0 { // the kubelet skips an empty value
		var config credentialprovider.DockerConfigJSON
		if err := json.Unmarshal(data, &config); err != nil {
			return configResult{}, fmt.Errorf("the keyring parsed what json.Unmarshal refuses: %w", err)
		}
		for key, entry := range config.Auths {
			result.Entries = append(result.Entries, entryResult{Key: key,
				credential: credentialOf(entry.Username, entry.Password, entry.Email)})
		}
		sort.Slice(result.Entries, func(i, j int) bool { return result.Entries[i].Key < result.Entries[j].Key })
	}
	for _, image := range c.Images {
		lookup := lookupResult{Image: image, Credentials: []credential{}}
		if repo, _, _, err := parsers.ParseImageName(image); err == nil {
			found, _ := keyring.Lookup(repo)
			for _, auth := range found {
				lookup.Credentials = append(lookup.Credentials, credentialOf(auth.Username, auth.Password, auth.Email))
			}
		}
		sort.Slice(lookup.Credentials, func(i, j int) bool {
			a, b := lookup.Credentials[i], lookup.Credentials[j]
			return a.Username+a.Password+a.Email < b.Username+b.Password+b.Email
		})
		result.Lookups = append(result.Lookups, lookup)
	}
	return result, nil
}
