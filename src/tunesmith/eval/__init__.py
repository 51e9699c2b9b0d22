"""Evaluation: task scorers (SQL execution accuracy, text metrics) and base-vs-adapted runs."""
