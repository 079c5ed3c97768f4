"""Local training at a site: models by name, the flat parameter layout, the (vmapped)
trainer, the site's data files, device choice, and differential privacy (``dp_config``:
the budget, plain data; ``dp``: DP-SGD through Opacus, loaded only when used)."""
