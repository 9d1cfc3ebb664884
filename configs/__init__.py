"""The shipped configs (YAML): installed as the package `worldcache.configs`, so a wheel install finds them too."""
