"""What every Murmur package shares and nothing else: the root of the error tree.

It imports nothing, so the leaf packages (``crypto``, ``topology``) can hang their errors
off it and still import nothing else of the project.
"""
