"""DP-SGD through Opacus: the one package that imports it, and only when a site trains
with DP (importing this package loads nothing; import its modules where DP is used).

- :mod:`.engine`: :class:`~.engine.DpTrainer`, the built-in trainer made private;
- :mod:`.loop`: :class:`~.loop.DpTrainingLoop`, a site's own PyTorch loop made private;
- :mod:`.row`: one privately trained row (module, DP optimizer, Poisson loader);
- :mod:`.accounting`: ε of a history and σ for a target (Opacus' analysis).

What a site asks for (ε, δ, clip, …) is :mod:`node.training.dp_config`, which needs no
Opacus.
"""
