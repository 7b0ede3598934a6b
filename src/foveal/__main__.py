from foveal.cli import main

raise SystemExit(main())
