from wgslirp.cli import main

raise SystemExit(main())
