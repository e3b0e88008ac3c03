//! [`UffdBuilder`]: creation options, the `UFFDIO_API` handshake, and its checks.

use crate::ioctl::api;
use crate::{open, Error, FeatureFlags, IoctlFlags, Result, Uffd};
use userfaultfd_sys as sys;

/// Creates a [`Uffd`] with the chosen flags and features.
///
/// ```no_run
/// use userfaultfd::{FeatureFlags, UffdBuilder};
/// let uffd = UffdBuilder::new()
///     .close_on_exec(true)
///     .non_blocking(true)
///     .require_features(FeatureFlags::THREAD_ID | FeatureFlags::EVENT_REMOVE)
///     .create()?;
/// # Ok::<(), userfaultfd::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct UffdBuilder {
    close_on_exec: bool,
    non_blocking: bool,
    user_mode_only: bool,
    features: FeatureFlags,
    ioctls: IoctlFlags,
}

impl Default for UffdBuilder {
    fn default() -> Self {
        UffdBuilder::new()
    }
}

impl UffdBuilder {
    /// No required features or ioctls, `close_on_exec` and `non_blocking` off, and
    /// `user_mode_only` on (as in userfaultfd 0.9).
    pub fn new() -> UffdBuilder {
        UffdBuilder {
            close_on_exec: false,
            non_blocking: false,
            user_mode_only: true,
            features: FeatureFlags::empty(),
            ioctls: IoctlFlags::empty(),
        }
    }

    /// `O_CLOEXEC`: close the descriptor in `execve(2)`.
    pub fn close_on_exec(&mut self, close_on_exec: bool) -> &mut Self {
        self.close_on_exec = close_on_exec;
        self
    }

    /// `O_NONBLOCK`: reading events returns at once when none is pending
    /// ([`Uffd::read_event`] gives `None`). Needed to use the descriptor with `poll(2)`: on a
    /// blocking userfaultfd, `poll` reports `POLLERR`.
    pub fn non_blocking(&mut self, non_blocking: bool) -> &mut Self {
        self.non_blocking = non_blocking;
        self
    }

    /// `UFFD_USER_MODE_ONLY` (default on): handle only faults raised in user mode. Faults the
    /// kernel takes while accessing user memory for a system call (`read(2)` into a
    /// registered buffer) then fail with `EFAULT` instead of waiting for the handler.
    ///
    /// With it, an unprivileged process may use the `userfaultfd(2)` system call even when
    /// `vm.unprivileged_userfaultfd` is 0 (Linux 5.11+). Kernels before 5.11 do not know the
    /// flag: creation then retries without it.
    pub fn user_mode_only(&mut self, user_mode_only: bool) -> &mut Self {
        self.user_mode_only = user_mode_only;
        self
    }

    /// Adds features to enable; [`create`](Self::create) fails with
    /// [`Error::UnsupportedFeatures`] naming those the running kernel lacks.
    pub fn require_features(&mut self, features: FeatureFlags) -> &mut Self {
        self.features |= features;
        self
    }

    /// Adds ioctls the descriptor must allow; [`create`](Self::create) fails with
    /// [`Error::UnsupportedIoctls`] otherwise.
    ///
    /// They are checked against the ioctls `UFFDIO_API` reports for the descriptor itself
    /// (`API`, `REGISTER`, `UNREGISTER`, as in userfaultfd 0.9). The ioctls allowed on a
    /// range (`COPY`, `WAKE`, ...) depend on its memory type and mode, and are what
    /// [`Uffd::register`] returns.
    pub fn require_ioctls(&mut self, ioctls: IoctlFlags) -> &mut Self {
        self.ioctls |= ioctls;
        self
    }

    /// Creates the descriptor (see [`Uffd`] for the ways tried) and performs the `UFFDIO_API`
    /// handshake.
    ///
    /// # Errors
    ///
    /// - [`Error::CreateFailed`] when neither `/dev/userfaultfd` nor the system call gives a
    ///   descriptor, saying why each failed; [`Error::OpenDevUserfaultfd`] when the device
    ///   exists and fails for a reason other than permissions.
    /// - [`Error::UnsupportedFeatures`] naming the required features the kernel lacks.
    /// - [`Error::SystemError`] with `EPERM` when `EVENT_FORK` is required without
    ///   `CAP_SYS_PTRACE`.
    /// - [`Error::UnsupportedIoctls`] when a required ioctl is not allowed.
    pub fn create(&self) -> Result<Uffd> {
        let fd = open::new_userfaultfd(self.flags())?;
        let reply = match api::handshake(&fd, self.features) {
            Ok(reply) => reply,
            Err(errno) => return Err(self.explain_api_failure(errno)),
        };
        if !reply.ioctls.contains(self.ioctls) {
            return Err(Error::UnsupportedIoctls(reply.ioctls));
        }
        Ok(Uffd::from_parts(fd, self.enabled_features()))
    }

    /// The features the kernel enables for this request: the requested ones, plus
    /// `WP_UNPOPULATED` when `WP_ASYNC` is requested (the kernel implies it, and reports it in
    /// fdinfo, which is where an adopted descriptor's features come from).
    fn enabled_features(&self) -> FeatureFlags {
        if self.features.contains(FeatureFlags::WP_ASYNC) {
            self.features | FeatureFlags::WP_UNPOPULATED
        } else {
            self.features
        }
    }

    fn flags(&self) -> libc::c_int {
        let mut flags = 0;
        if self.close_on_exec {
            flags |= libc::O_CLOEXEC;
        }
        if self.non_blocking {
            flags |= libc::O_NONBLOCK;
        }
        if self.user_mode_only {
            flags |= sys::UFFD_USER_MODE_ONLY as libc::c_int;
        }
        flags
    }

    /// `EINVAL` from the handshake means "unsupported feature" when features were requested:
    /// ask a throw-away descriptor what the kernel supports to name the missing ones. (The
    /// failed descriptor is not reused: some kernels mark it initialised before checking the
    /// features, so a second handshake on it would fail.)
    fn explain_api_failure(&self, errno: crate::Errno) -> Error {
        if errno == crate::Errno::EINVAL && !self.features.is_empty() {
            if let Ok(caps) = crate::probe() {
                let missing = self.features - caps.features();
                if !missing.is_empty() {
                    return Error::UnsupportedFeatures(missing);
                }
            }
        }
        Error::SystemError(errno)
    }
}
