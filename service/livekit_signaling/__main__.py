from livekit_signaling.app.cli import main

raise SystemExit(main())
