"""lanner's built-in rule library: 73 TracingPolicies mapped to MITRE ATT&CK (the *.yaml files) and their
catalog (catalog.py); see README.md here and docs/rules.md."""
