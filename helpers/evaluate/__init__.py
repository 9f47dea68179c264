"""Measuring search: metrics, the knob sweep, the 06 comparison."""
