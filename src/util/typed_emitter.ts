/**
 * An EventEmitter whose on / once / off take only the event names of `Events`, each listener
 * typed with its event's payload, so a misspelt event name does not compile.
 */
import { EventEmitter } from 'events';

export class TypedEmitter<Events extends object> extends EventEmitter {
  override on<K extends keyof Events & string>(event: K, listener: (e: Events[K]) => void): this {
    return super.on(event, listener);
  }

  override addListener<K extends keyof Events & string>(event: K, listener: (e: Events[K]) => void): this {
    return super.addListener(event, listener);
  }

  override once<K extends keyof Events & string>(event: K, listener: (e: Events[K]) => void): this {
    return super.once(event, listener);
  }

  override off<K extends keyof Events & string>(event: K, listener: (e: Events[K]) => void): this {
    return super.off(event, listener);
  }
}
