"""The feed-forward gating demonstrations, run as ``gated demo NAME``.

Each demo module provides ``HELP``, ``add_arguments(parser)``, ``run(args, bar) -> dict``,
``total_steps(args)``, ``table(results) -> str`` and ``figure(results, path)`` (and optionally
``save_extra(results, out, name)`` for files beside the JSON); ``cli.py`` runs one and writes
``NAME.json``, ``NAME.md`` and ``NAME.png`` into ``--out``.

    highway.py         deep highway MLP vs plain MLP on MNIST
    channel_gating.py  channel-gated CNN on Fashion-MNIST: accuracy vs counted FLOP reduction
    glu_ffn.py         GLU-variant FFNs in a tiny character-level Transformer on KJV
    gated_attention.py gated attention (Qiu et al. 2025) vs plain attention in a small KJV Transformer
    common.py          flags, data, progress bar, provenance and output files shared by the demos;
                       corpus, model shell, schedule, training loop of the character-level ones
"""

#: ``gated demo NAME`` -> module.
DEMOS: dict[str, str] = {
    "highway": "gated.harness.demos.highway",
    "channel-gating": "gated.harness.demos.channel_gating",
    "glu-ffn": "gated.harness.demos.glu_ffn",
    "gated-attention": "gated.harness.demos.gated_attention",
}
