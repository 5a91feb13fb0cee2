"""graphopt's first-party passes, installed as `graphopt_plugins`.

Each subpackage is a plugin registered through the `graphopt` entry-point group, exactly as a
third-party plugin would be; the graphopt core never imports anything from here.
"""
