package herald.mobile

import java.nio.file.Files
import java.nio.file.Path
import java.time.Duration
import java.util.concurrent.ConcurrentHashMap
import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit

/** One callback a [RecordingListener] received. */
sealed interface Heard {
    data class Event(
        val channel: String,
        val payloadJson: String,
        val messageId: String?,
        val offset: ULong? = null,
        val epoch: String? = null,
    ) : Heard
    data class System(val code: SystemMessageCode, val message: String, val dataJson: String?) : Heard
    data class State(val state: ConnectionState) : Heard
    data class RelistenFailed(val channel: String, val error: HeraldException) : Heard
    data class Recovery(val channel: String, val recovered: Boolean, val reason: RecoveryReason?) : Heard
    data class Presence(val channel: String, val action: PresenceAction, val member: PresenceMember) : Heard
    data class PresenceSynced(val channel: String, val members: List<PresenceMember>) : Heard
}

/**
 * The name the OS knows the current thread by (Linux). JNA attaches the Rust threads that call
 * back into Kotlin under generic JVM names (`Thread-N`, a new one per call), so the JVM name
 * says nothing; the OS name is the one Rust gave.
 */
fun osThreadName(): String =
    runCatching { Files.readString(Path.of("/proc/thread-self/comm")).trim() }
        .getOrElse { Thread.currentThread().name }

/** How long a test waits for something that should happen promptly. */
val WAIT: Duration = Duration.ofSeconds(15)

/**
 * A [HeraldListener] that records every callback, and the names of the threads they came on, for
 * the test thread to wait for.
 */
class RecordingListener : HeraldListener {
    private val unread = LinkedBlockingQueue<Heard>()

    /** Everything heard, in order. */
    val history: MutableList<Heard> = CopyOnWriteArrayList()

    /** The (OS) names of the threads the callbacks were called on. */
    val threads: MutableSet<String> = ConcurrentHashMap.newKeySet()

    private fun record(heard: Heard) {
        threads.add(osThreadName())
        history.add(heard)
        unread.add(heard)
    }

    override fun onEvent(channelName: String, payloadJson: String, messageId: String?, offset: ULong?, epoch: String?) =
        record(Heard.Event(channelName, payloadJson, messageId, offset, epoch))

    override fun onSystemMessage(code: SystemMessageCode, message: String, dataJson: String?) =
        record(Heard.System(code, message, dataJson))

    override fun onState(state: ConnectionState) = record(Heard.State(state))

    override fun onRelistenFailed(channelName: String, error: HeraldException) =
        record(Heard.RelistenFailed(channelName, error))

    override fun onRecovery(channelName: String, recovered: Boolean, reason: RecoveryReason?) =
        record(Heard.Recovery(channelName, recovered, reason))

    override fun onPresence(channelName: String, action: PresenceAction, member: PresenceMember) =
        record(Heard.Presence(channelName, action, member))

    override fun onPresenceSynced(channelName: String, members: List<PresenceMember>) =
        record(Heard.PresenceSynced(channelName, members))

    /** Reads callbacks (in order, from the last one read) until [match] accepts one. */
    fun <T : Any> await(what: String, timeout: Duration = WAIT, match: (Heard) -> T?): T {
        val deadline = System.nanoTime() + timeout.toNanos()
        while (true) {
            val left = deadline - System.nanoTime()
            if (left <= 0) throw AssertionError("timed out after $timeout waiting for $what; heard: $history")
            val heard = unread.poll(left, TimeUnit.NANOSECONDS) ?: continue
            match(heard)?.let { return it }
        }
    }

    fun awaitEvent(channel: String): Heard.Event =
        await("an event on $channel") { (it as? Heard.Event)?.takeIf { e -> e.channel == channel } }

    fun awaitState(what: String, match: (ConnectionState) -> Boolean): ConnectionState =
        await("state $what") { (it as? Heard.State)?.state?.takeIf(match) }

    fun awaitSystem(code: SystemMessageCode, match: (Heard.System) -> Boolean = { true }): Heard.System =
        await("system message $code") { (it as? Heard.System)?.takeIf { m -> m.code == code && match(m) } }
}
