"""Built-in plugins: one module per plugin, each registering through the hooks in genvae.core.hookspecs."""

BUILTIN_PLUGINS = [
    "genvae.plugins.fc",
    "genvae.plugins.conv",
    "genvae.plugins.normal",
    "genvae.plugins.vamp",
    "genvae.plugins.mse",
    "genvae.plugins.bce",
    "genvae.plugins.gaussian",
    "genvae.plugins.kl",
    "genvae.plugins.shapes",
    "genvae.plugins.torchvision_data",
    "genvae.plugins.cr_lstm",
    "genvae.plugins.adv",
    "genvae.plugins.mi",
    "genvae.plugins.laplacian",
    "genvae.plugins.m_net",
    "genvae.plugins.neighbours",
    "genvae.plugins.metrics",
    "genvae.plugins.classifier",
    "genvae.plugins.completion",
    "genvae.plugins.perceptual",
]
