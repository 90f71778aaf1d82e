"""Contained workers: profiles, host probe, sandbox launcher, worker pool, egress proxy.

Kept import-light on purpose: ``gateway.config`` imports the settings models from here, so nothing in this
package's ``__init__`` may import the runtime (which imports the config back).
"""
