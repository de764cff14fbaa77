"""Adapters to other libraries. Each submodule imports its library lazily (it is an optional extra)."""
