"""Evaluation on the held-out split, the deployment gate, explanations, fairness and reports."""
