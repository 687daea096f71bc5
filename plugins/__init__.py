"""kdzoo's built-in methods, each a plugin module registered through the ``kdzoo`` entry-point
group exactly as a third-party package registers its own (import name ``kdzoo_plugins``)."""
