"""Inter-process plumbing: the shared-memory audio plane and the ZeroMQ control plane."""
