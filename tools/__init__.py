"""Operator and test tools: setup, and (in later issues) the synthetic caller and soak driver."""
