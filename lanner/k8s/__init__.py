"""The agent on the Kubernetes API (``lanner agent --enable-k8s-api``).

``client`` makes the API client (a kubeconfig or the in-cluster service account); ``reflector`` is a small
list+watch cache of one resource run in a thread; ``tracingpolicies`` turns TracingPolicy and
TracingPolicyNamespaced objects into policy-engine adds and deletes (``spec.nodeSelector`` per node);
``events`` reports a node's load error or skip as a rate-limited Kubernetes Event on the policy;
``integration`` wires them together behind one object with ``start``/``close``/``status`` that the agent
owns. It is not under ``netdp`` because it feeds the agent's policies (``lanner.sensors.generic.sensor``)
first and the datapath only later.
"""
