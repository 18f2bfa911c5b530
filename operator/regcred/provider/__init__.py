"""Pull-time delivery: the kubelet's image credential provider plugin and regcred's endpoint."""
