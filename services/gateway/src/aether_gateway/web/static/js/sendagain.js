// "Send again" for a write that failed where sending it again may go otherwise (no
// answer, a timeout, "try again shortly", a 5xx): the same request with the same
// Idempotency-Key (``Write``), so one that did reach the gateway is not done twice. It
// is offered to the person, never done by itself; a refusal that would come again (a
// 400, 403, 404, 409 about the mission's state, 422) gets none.

import { Write } from "./api.js";
import { clear, h } from "./dom.js";

/** The button's words while it waits out a Retry-After: in seconds, or at a time. */
function waiting(until) {
  const seconds = Math.max(1, Math.ceil((until - Date.now()) / 1000));
  if (seconds < 90) return `Send again in ${seconds} s`;
  return `Send again at ${new Date(until).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}`;
}

/**
 * Put a "Send again" button (id ``id``) in ``slot`` when ``error`` says sending ``write``
 * again may succeed, else leave ``slot`` empty; a click empties it and calls
 * ``send(write)``. While the gateway's Retry-After runs the button waits, saying when.
 * Answers the button, or null.
 */
export function offerSendAgain(slot, write, error, send, id) {
  clear(slot);
  if (!write || !Write.mayResend(error)) return null;
  const button = h("button", { type: "button", class: "small send-again", id, "data-key": write.key }, "Send again");
  button.addEventListener("click", () => {
    clear(slot);
    send(write);
  });
  slot.append(button);
  const seconds = error.retryAfter;
  if (typeof seconds === "number" && seconds > 0) {
    const until = Date.now() + seconds * 1000;
    button.disabled = true;
    button.textContent = waiting(until);
    const timer = setInterval(() => {
      if (!button.isConnected) return clearInterval(timer);
      if (Date.now() < until) {
        button.textContent = waiting(until);
        return;
      }
      clearInterval(timer);
      button.disabled = false;
      button.textContent = "Send again";
    }, 500);
  }
  return button;
}
