if __name__ != "scenegrep.indexer":  # one module, one name: never import this folder as a top-level package
    raise ImportError(f"import scenegrep.indexer, not {__name__} (the folder is installed under the scenegrep package)")

