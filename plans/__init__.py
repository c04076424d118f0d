"""Plans presets for ``dinomix_plans_preset`` (JSON files next to this one)."""
