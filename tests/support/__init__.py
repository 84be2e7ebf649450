"""Only for tests/console, whose rework (another change) moves its imports to ``testkit``: delete this
package then. Everything here is ``testkit``'s."""
