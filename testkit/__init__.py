"""What the tests and the bench share, and nothing of the shipped package (``pyproject.toml`` packages
``livekit_signaling`` only):

- ``processes``: the service and the LiveKit emulator as processes on uuid-named topologies (``Names``);
- ``amqp``: a controller's and a client's view of the broker (``SignalingClient``), encoding commands,
  deleting a topology;
- ``emulator``: the emulator's control routes and the real ``livekit-api`` client against it;
- ``load``: load that keeps books of every confirmed command and its answers (``LoadClient``, ``Books``);
- ``faults``: a fault under that load, and the figures fault tests print (lost, doubled, reordered,
  longest gaps, copies absorbed and where they came from);
- ``cleanup``: stopping services, deleting topology and Redis keys after a test;
- ``proxy``: a TCP proxy that forwards, blackholes, resets or refuses;
- ``tls``: throw-away certificates;
- ``broker_admin``, ``broker_accounts``: the system RabbitMQ's application, vhosts, users and the
  shipped permissions with a test's names;
- ``rabbit_cluster``, ``redis_sentinel``, ``redis_cluster``: a 3-node RabbitMQ cluster, a
  Sentinel-managed Redis (on loopback or on test hosts) and a Redis Cluster (three masters, two
  replicas each) of their own;
- ``hosts``, ``netns``: where a process runs (``Host``), and test hosts in network namespaces with the
  faults between them (partitions, one-way cuts, silent drops);
- ``otlp``: an OpenTelemetry Collector's OTLP/HTTP traces receiver, in a thread or as a process;
- ``pipeline``: the command pipeline without a broker (a transport that confirms at once).
"""
