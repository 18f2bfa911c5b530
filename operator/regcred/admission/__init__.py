"""The ServiceAccount admission webhook (`--admission`): its server and configuration
(`webhook`) and its certificates (`tls`); its decision is the core's (`core/admission.py`)."""
