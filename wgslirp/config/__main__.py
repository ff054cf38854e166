"""``python -m wgslirp.config``: regenerate docs/configuration.md or check a configuration."""

from wgslirp.config.render import main

raise SystemExit(main())
