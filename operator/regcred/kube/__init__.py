"""The Kubernetes layer: configuration (`config`), errors typed by meaning (`errors`) and the
thin client (`client`), the only code that talks to the API server. It decides nothing."""
