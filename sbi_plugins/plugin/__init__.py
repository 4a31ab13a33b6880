"""The plugin machinery: hook specifications and the registry that loads plugins
(entry points, fault isolation, clashes). The contract plugins write against is
`sbi_plugins.contract`."""
