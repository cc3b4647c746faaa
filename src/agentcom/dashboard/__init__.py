"""The dashboard page, served by the hub at ``/dashboard``."""
