"""Automation: tier changes become differentiated, signed, never-duplicated touch actions."""
