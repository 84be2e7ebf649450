// A controller in TypeScript, typed by the generated contract (src/contract/*.ts) alone: it publishes
// command envelopes (persistent, mandatory, confirmed) and reads the events from an exclusive,
// server-named queue, correlating each answer by the command's message_id. What it needs of RabbitMQ is a
// controller's permissions (deploy/rabbitmq/definitions.json): the exchanges are checked, never declared.
import { randomUUID } from "node:crypto";
import amqp from "amqplib";
import type { ChannelModel, ConfirmChannel, ConsumeMessage } from "amqplib";
import type { CommandEnvelope } from "./contract/command.js";
import type { EventMessage } from "./contract/event.js";

export interface Exchanges {
  commands: string;
  events: string;
}

/** An event as received: its routing key, the message_id of the command it answers, and its body. */
export interface Received {
  routingKey: string;
  correlationId: string | undefined;
  event: EventMessage;
}

export class Controller {
  private readonly waiting = new Map<string, (received: Received) => void>();
  private readonly returned = new Set<string>();
  private readonly bound = new Set<string>();
  private readonly listeners: ((received: Received) => void)[] = [];

  private constructor(
    private readonly connection: ChannelModel,
    private readonly channel: ConfirmChannel,
    private readonly queue: string,
    private readonly exchanges: Exchanges,
    private readonly userId: string,
  ) {}

  static async connect(url: string, exchanges: Exchanges): Promise<Controller> {
    const connection = await amqp.connect(url);
    try {
      const channel = await connection.createConfirmChannel();
      await channel.checkExchange(exchanges.commands);
      await channel.checkExchange(exchanges.events);
      const { queue } = await channel.assertQueue("", { exclusive: true, autoDelete: true });
      // RabbitMQ checks user_id against the connection's user (what SIGNALING_TRUSTED_PUBLISHERS reads).
      const userId = decodeURIComponent(new URL(url).username) || "guest";
      const controller = new Controller(connection, channel, queue, exchanges, userId);
      channel.on("return", (message: ConsumeMessage) => {
        if (message.properties.messageId) controller.returned.add(String(message.properties.messageId));
      });
      await channel.consume(queue, (message) => message && controller.deliver(message), { noAck: true });
      return controller;
    } catch (error) {
      await connection.close();
      throw error;
    }
  }

  /** Publish a command and resolve with its message_id once the broker confirmed it. */
  async publish(envelope: CommandEnvelope, messageId: string = randomUUID()): Promise<string> {
    const routingKey = `room.${envelope.room}`;
    await new Promise<void>((resolve, reject) => {
      this.channel.publish(
        this.exchanges.commands,
        routingKey,
        Buffer.from(JSON.stringify(envelope)),
        {
          messageId,
          contentType: "application/json",
          persistent: true,
          mandatory: true,
          userId: this.userId,
        },
        (error: unknown) => {
          // A return (no queue for the key) arrives before the confirm on the same channel.
          if (error) reject(error instanceof Error ? error : new Error(String(error)));
          else if (this.returned.delete(messageId)) reject(new Error(`no queue is bound for ${routingKey}`));
          else resolve();
        },
      );
    });
    return messageId;
  }

  /** Publish a command and resolve with the first event that answers its sender. */
  async ask(envelope: CommandEnvelope, timeoutMs = 10_000): Promise<EventMessage> {
    await this.watch(envelope.room);
    const messageId = randomUUID();
    const answer = new Promise<EventMessage>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(messageId);
        reject(new Error(`no answer to ${envelope.payload.action} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting.set(messageId, (received) => {
        if (received.event.participant !== envelope.participant) return;
        clearTimeout(timer);
        this.waiting.delete(messageId);
        resolve(received.event);
      });
    });
    // Waiting before publishing: the answer can arrive before the confirm.
    await this.publish(envelope, messageId);
    return answer;
  }

  /** Bind the queue to every event of a room (room.<room>.#). */
  async watch(room: string): Promise<void> {
    const key = `room.${room}.#`;
    if (this.bound.has(key)) return;
    await this.channel.bindQueue(this.queue, this.exchanges.events, key);
    this.bound.add(key);
  }

  /** Events seen from now on, to a callback (in the order the broker delivers them); returns the
   * function that stops it. */
  onEvent(listener: (received: Received) => void): () => void {
    this.listeners.push(listener);
    return () => this.listeners.splice(this.listeners.indexOf(listener), 1);
  }

  /** The first event from now on that ``matches`` (its room must be watched). */
  nextEvent(matches: (received: Received) => boolean, timeoutMs = 10_000): Promise<Received> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        stop();
        reject(new Error(`no matching event within ${timeoutMs} ms`));
      }, timeoutMs);
      const stop = this.onEvent((received) => {
        if (!matches(received)) return;
        clearTimeout(timer);
        stop();
        resolve(received);
      });
    });
  }

  private deliver(message: ConsumeMessage): void {
    const received: Received = {
      routingKey: message.fields.routingKey,
      correlationId: message.properties.correlationId ? String(message.properties.correlationId) : undefined,
      event: JSON.parse(message.content.toString("utf8")) as EventMessage,
    };
    for (const listener of this.listeners) listener(received);
    if (received.correlationId !== undefined) this.waiting.get(received.correlationId)?.(received);
  }

  async close(): Promise<void> {
    await this.connection.close();
  }
}
