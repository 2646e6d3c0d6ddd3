"""What ``mig`` may ask: the Control service (``_service.py``, one method per rpc of ``control.proto``), the Unix
socket that serves it (``_socket.py``), and the routes that take a command about an app to the paired host it
concerns (``_routes.py``)."""

from migrated.daemon.control._routes import Role, Routes
from migrated.daemon.control._service import ControlService
from migrated.daemon.control._socket import ControlSocket

__all__ = ["ControlService", "ControlSocket", "Role", "Routes"]
