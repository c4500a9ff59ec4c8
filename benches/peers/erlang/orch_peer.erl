%% Erlang/OTP peer for orch's benchmark shapes; driven by benches/peers/erlang_bench.py.
%%
%% Started as the driver node A:
%%   erl -noshell -name a@127.0.0.1 -setcookie C -pa EBIN -s orch_peer main \
%%       -extra Shape PeerNode N TimeoutMs
%% Shape is throughput | latency | failover. PeerNode (node B, started by the Python driver
%% with the same cookie and code path) is the remote side / the victim.
%% Output: one line per fact on stdout, "KEY k=v k=v ..." (parsed by erlang_bench.py).
-module(orch_peer).
-export([main/0, noop/2, long_task/2]).

main() ->
    Code = try run(init:get_plain_arguments()) of
               ok -> 0
           catch C:E:St ->
               out("ERROR ~0p:~0p ~0p", [C, E, St]),
               1
           end,
    halt(Code).

run([Shape, PeerS, NS, TimeoutS]) ->
    Peer = list_to_atom(PeerS),
    N = list_to_integer(NS),
    Timeout = list_to_integer(TimeoutS),
    out("INFO otp=~s erts=~s net_ticktime=~b node=~s",
        [otp_version(), erlang:system_info(version), net_kernel:get_net_ticktime(), node()]),
    connect(Peer, erlang:monotonic_time(millisecond) + 30000),
    shape(list_to_atom(Shape), Peer, N, Timeout),
    out("DONE", []),
    ok.

otp_version() ->
    Rel = erlang:system_info(otp_release),
    F = filename:join([code:root_dir(), "releases", Rel, "OTP_VERSION"]),
    case file:read_file(F) of
        {ok, B} -> string:trim(binary_to_list(B));
        _ -> Rel
    end.

%% B is started concurrently by the driver: retry until it is registered and reachable.
connect(Peer, Deadline) ->
    case net_kernel:connect_node(Peer) of
        true -> ok;
        _ ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> error({timeout, waiting_for_connection_to, Peer});
                false -> timer:sleep(50), connect(Peer, Deadline)
            end
    end.

%% ---------------------------------------------------------------------------------------
%% The no-op task: a fresh process that replies to its parent and ends.
noop(Parent, I) -> Parent ! {done, I}.

shape(throughput, Peer, N, Timeout) ->
    warm(Peer, 100),
    LocalUs = throughput(node(), N, Timeout),
    out("THROUGHPUT where=local tasks=~b us=~b", [N, LocalUs]),
    RemoteUs = throughput(Peer, N, Timeout),
    out("THROUGHPUT where=remote tasks=~b us=~b", [N, RemoteUs]);
shape(latency, Peer, N, Timeout) ->
    warm(Peer, 20),
    out("LATENCY where=local ns=~s", [join(latency(node(), N, Timeout))]),
    out("LATENCY where=remote ns=~s", [join(latency(Peer, N, Timeout))]);
shape(failover, Peer, TaskMs, Timeout) ->
    failover(Peer, TaskMs, Timeout).

warm(Peer, K) ->
    _ = throughput(node(), K, 10000),
    _ = throughput(Peer, K, 10000),
    ok.

%% Spawn N processes on Where (each sends one reply), collect all N replies.
throughput(Where, N, Timeout) ->
    Self = self(),
    T0 = erlang:monotonic_time(microsecond),
    spawn_n(Where, Self, N),
    collect(N, Timeout),
    erlang:monotonic_time(microsecond) - T0.

spawn_n(_Where, _Self, 0) -> ok;
spawn_n(Where, Self, I) ->
    spawn(Where, ?MODULE, noop, [Self, I]),
    spawn_n(Where, Self, I - 1).

collect(0, _) -> ok;
collect(N, Timeout) ->
    receive {done, _} -> collect(N - 1, Timeout)
    after Timeout -> error({timeout, waiting_for_replies, N})
    end.

%% K sequential round trips: spawn one no-op on Where, wait for its reply.
latency(Where, K, Timeout) ->
    Self = self(),
    [begin
         T0 = erlang:monotonic_time(nanosecond),
         spawn(Where, ?MODULE, noop, [Self, I]),
         receive {done, I} -> ok
         after Timeout -> error({timeout, waiting_for_reply, I})
         end,
         erlang:monotonic_time(nanosecond) - T0
     end || I <- lists:seq(1, K)].

join(L) -> string:join([integer_to_list(X) || X <- L], ",").

%% ---------------------------------------------------------------------------------------
%% The long task: tells its owner where and when it started, then sleeps.
long_task(Owner, Ms) ->
    Owner ! {started, self(), node(), os:getpid(), os:system_time(microsecond)},
    timer:sleep(Ms),
    Owner ! {finished, self()}.

%% Spawn the long task on Peer and monitor both the node and the process. On nodedown,
%% respawn the task here, which is how one writes it in Erlang. Times are os:system_time in
%% microseconds so the driver can subtract its own time of the kill.
failover(Peer, TaskMs, Timeout) ->
    Self = self(),
    true = erlang:monitor_node(Peer, true),
    Pid = spawn(Peer, ?MODULE, long_task, [Self, TaskMs]),
    MRef = erlang:monitor(process, Pid),
    receive
        {started, Pid, Node, OsPid, T} ->
            out("STARTED node=~s ospid=~s t_us=~b", [Node, OsPid, T])
    after Timeout -> error({timeout, waiting_for_long_task_to_start_on, Peer})
    end,
    %% The driver kill -9s the peer now.
    wait_failover(Peer, Pid, MRef, TaskMs, Timeout, #{}).

wait_failover(_Peer, _Pid, _MRef, _TaskMs, _Timeout, #{nodedown := _, down := _, rerun := _}) ->
    ok;
wait_failover(Peer, Pid, MRef, TaskMs, Timeout, Seen) ->
    receive
        {nodedown, Peer} ->
            T = os:system_time(microsecond),
            out("NODEDOWN node=~s t_us=~b", [Peer, T]),
            New = spawn(?MODULE, long_task, [self(), TaskMs]),
            out("RESPAWNED pid=~0p", [New]),
            wait_failover(Peer, Pid, MRef, TaskMs, Timeout, Seen#{nodedown => T});
        {'DOWN', MRef, process, Pid, Reason} ->
            T = os:system_time(microsecond),
            out("DOWN reason=~0p t_us=~b", [Reason, T]),
            wait_failover(Peer, Pid, MRef, TaskMs, Timeout, Seen#{down => T});
        {started, P2, Node, OsPid, T} when P2 =/= Pid ->
            out("RERUN node=~s ospid=~s t_us=~b", [Node, OsPid, T]),
            wait_failover(Peer, Pid, MRef, TaskMs, Timeout, Seen#{rerun => T})
    after Timeout ->
        Missing = [K || K <- [nodedown, down, rerun], not maps:is_key(K, Seen)],
        error({timeout, waiting_for, Missing})
    end.

out(Fmt, Args) ->
    io:format(standard_io, Fmt ++ "~n", Args).
