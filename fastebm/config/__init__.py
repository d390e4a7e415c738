"""A run's options: every option with its default and source (:mod:`~fastebm.config.options.options`), what each
accepts (:mod:`~fastebm.config.options.limits`), the recipes of the models beside M-EBM / M-JEM and the paper's rows.
"""
