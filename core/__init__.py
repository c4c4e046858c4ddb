"""The functional core shared by controller and agent: models, resolve, plan. Pure."""
