"""Evaluation: emotion-probe activation, failure-mode rates and capability, with confidence intervals."""
