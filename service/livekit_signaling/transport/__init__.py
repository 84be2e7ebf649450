"""The AMQP transport: the only code that touches aio-pika."""
