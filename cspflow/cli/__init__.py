"""The ``cspflow`` command line: ``cspflow <noun> <verb>``, thin over the stage modules."""
